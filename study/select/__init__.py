"""Selection stage: winner choice, statistics, model export and loading."""
