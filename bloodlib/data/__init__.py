"""Cells on disk to pixels in memory: one image's path from a folder to a batch.

- :mod:`~bloodlib.data.source`: where the data is (the sample, the PBC download, a folder, a
  zip) and its fingerprint;
- :mod:`~bloodlib.data.files`: one file's class and defects; :mod:`~bloodlib.data.manifest`:
  a whole folder scanned, copies found, cached;
- :mod:`~bloodlib.data.split`: the leak-free train/val/test split, and what a model learnt
  from (``trained_on``);
- :mod:`~bloodlib.data.sample`: the embedded classroom sample;
- :mod:`~bloodlib.data.pipeline`: tf.data decoding, resizing and augmentation;
- :mod:`~bloodlib.data.stain` (colour) and :mod:`~bloodlib.data.look` (size, a folder's
  look, the synthetic lab): another lab's cells moved towards PBC's;
- :mod:`~bloodlib.data.labs`: another lab's folders, labelled and unlabelled.

Only :mod:`~bloodlib.data.pipeline` imports TensorFlow; the rest reads files with Pillow.
"""
