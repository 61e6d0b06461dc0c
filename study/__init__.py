"""pneumoscope's study: data, preprocessing, search, winner, report."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides the study's own
# progress lines; users can still set TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
