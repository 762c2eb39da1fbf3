"""Experiments built on `engine.train` and `evaluation`: grouped k-fold cross-validation (`cv`) and
hyperparameter search with Optuna (`tune`)."""
