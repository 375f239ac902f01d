"""Networks and saved models: what a model is, on disk and in memory.

- :mod:`~bloodlib.models.backbones`: the registry of every backbone by name (ImageNet
  weights offline for EfficientNet-Lite0/1/2 and MobileNetV2), the feature extractor;
- :mod:`~bloodlib.models.efficientnet_lite`, :mod:`~bloodlib.models.mobilenet_v2`: the Keras
  ports; :mod:`~bloodlib.models.torch_weights` and :mod:`~bloodlib.models.torch_port`: the
  restricted reader of PyTorch weight files (no torch, no code run);
- :mod:`~bloodlib.models.features`: cached pooled features (design 1);
  :mod:`~bloodlib.models.svm`: the SVM pipeline, saved with skops;
- :mod:`~bloodlib.models.saved`: the file format, the sidecar and its binding to the model,
  safe loading (:func:`~bloodlib.models.saved.open_model`), and the rule every command that
  writes a model follows;
- :mod:`~bloodlib.models.ensemble`: several networks averaged into one model.

Predicting with a saved model is :mod:`bloodlib.predict`'s.
"""
