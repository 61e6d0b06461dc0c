"""Search stage: tf.data pipelines, Keras-Tuner tuners, trial log, per-family runner."""

# The Keras-Tuner oracles a study can use (TF-free here so the study's flags can list them;
# study.search.tuning.TUNER_CLASSES maps each to its class).
TUNERS: tuple[str, ...] = ("hyperband", "bayesian", "random")
