"""Training: the paper's two designs, and adapting a network to another lab.

- :mod:`~bloodlib.train.design1`: design 1, frozen ImageNet features and an SVM;
- design 2, fine-tuning: :mod:`~bloodlib.train.recipe` (every knob, TensorFlow-free),
  :mod:`~bloodlib.train.network` (the Keras model, what each phase trains, the optimiser),
  :mod:`~bloodlib.train.devices` (precision, strategies), :mod:`~bloodlib.train.callbacks`
  (logs and backups that survive a kill) and :mod:`~bloodlib.train.finetune` (both phases,
  resumable, and the saved model);
- :mod:`~bloodlib.train.adapt` (``python -m bloodlib adapt``) over
  :mod:`~bloodlib.train.few_shot` (what learns from a few labelled cells, and how).
"""
