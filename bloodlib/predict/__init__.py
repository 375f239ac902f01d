"""A saved model answering for cells: the prediction engine and what is built on it.

- :mod:`~bloodlib.predict.engine`: :func:`~bloodlib.predict.engine.load_classifier` and the
  :class:`~bloodlib.predict.engine.Classifier` (TFLite or Keras for networks, cached
  features for SVMs);
- :mod:`~bloodlib.predict.inference`: the forward passes (XNNPACK on CPUs), test-time
  augmentation, batching;
- :mod:`~bloodlib.predict.classify`: ``python -m bloodlib classify``, a folder to a CSV;
- :mod:`~bloodlib.predict.cam`: Grad-CAM saliency maps;
- :mod:`~bloodlib.predict.export`: TFLite, ONNX and SavedModel exports, checked against Keras.
"""
