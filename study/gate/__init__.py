"""Stage gate (between models and search): the input gate's features, fitting and model.

``scalar`` (hand-made X-ray and quality features), ``embed`` (the ImageNet
EfficientNet-Lite0 features), ``sources`` (fit and calibration images), ``model``
(the fitted gate: load, score, save) and ``fit`` (``run_study.py gate fit``).
The service reaches it only through :mod:`study.serving` and never fits.
"""
