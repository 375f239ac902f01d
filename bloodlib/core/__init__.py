"""The ground floor: what every other layer may use, and nothing of the study itself.

- :mod:`~bloodlib.core.config`: paths (the checkout, the sample, the cache), seeds, names of
  a run's models;
- :mod:`~bloodlib.core.errors`: the user-facing errors (the CLI prints their message);
- :mod:`~bloodlib.core.io`: atomic writes; :mod:`~bloodlib.core.hashing`: content hashes;
- :mod:`~bloodlib.core.paths`: the rules every command checks before it writes a file;
- :mod:`~bloodlib.core.paper`: the facts of Acevedo et al. 2019 and of the PBC dataset;
- :mod:`~bloodlib.core.quiet` and :mod:`~bloodlib.core.progress`: TensorFlow's log noise
  kept out, progress bars.

Imports no NumPy at import time except where a module needs it: the CLI's ``--help`` reads
:mod:`~bloodlib.core.config`.
"""
