"""The study as papermill runs it, and what notebooks 04 and 05 call to score it.

- :mod:`~bloodlib.study.runner`: ``python -m bloodlib run``, resumable, one process per run
  folder, over :mod:`~bloodlib.study.profiles` (``profiles.yml`` and the parameter layers),
  :mod:`~bloodlib.study.parameters` (every value checked first),
  :mod:`~bloodlib.study.planning` (what each notebook gets), :mod:`~bloodlib.study.run_lock`
  and :mod:`~bloodlib.study.kernels` (one notebook executed);
- :mod:`~bloodlib.study.provenance`: versions, code and data hashes, hardware;
- :mod:`~bloodlib.study.scoring`: a run's models scored on its test split (notebook 04);
- :mod:`~bloodlib.study.domain`: another lab's cells, and what each remedy buys (notebook 05).
"""
