"""Search stage: tf.data pipelines, Keras-Tuner tuners, trial log, per-family runner."""

# The Keras-Tuner oracles a study can use (TF-free here so the study's flags can list them;
# study.search.tuning.TUNER_CLASSES maps each to its class).
TUNERS: tuple[str, ...] = ("hyperband", "bayesian", "random")

# What ranks trials and ensembles (study.search.trial_log.objective computes each from a
# trial's saved predictions, so a finished study re-ranks without training).
OBJECTIVES: dict[str, str] = {
    "val_auc": "exact ROC-AUC on clean validation",
    "shift_auc": "exact ROC-AUC on the shift sample (each validation image under one "
    "seeded random corruption)",
    "mean_auc": "mean of val_auc and shift_auc",
}
OBJECTIVE_NAMES: tuple[str, ...] = tuple(OBJECTIVES)
OBJECTIVE_HELP = "; ".join(f"{k} = {v}" for k, v in OBJECTIVES.items())
