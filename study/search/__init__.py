"""Search stage: tf.data pipelines, Keras-Tuner tuners, trial log, per-family runner."""
