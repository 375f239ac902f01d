"""What the notebooks show a student: sentences, figures, tables and widgets.

- :mod:`~bloodlib.teach.narrative`: every sentence that states a number, computed from it;
- :mod:`~bloodlib.teach.plots`: every figure, one module per notebook;
- :mod:`~bloodlib.teach.hematology`: the eight cell types as a hematologist describes them;
- :mod:`~bloodlib.teach.lesson`: views of a fine-tuning run (layers, phases, schedule);
- :mod:`~bloodlib.teach.versus_paper`: how a run's recipe differs from the paper's;
- :mod:`~bloodlib.teach.widgets`: the confusion browser and "classify your own cell";
- :mod:`~bloodlib.teach.notebook`: the helpers every notebook shares (environment, banner,
  figures saved and shown, the run folder).

Nothing here trains or decides: it reads results and makes them readable.
"""
