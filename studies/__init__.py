"""Experiments about the method itself, each run through a thin suite (`studies.estimators`: the MI estimator study)."""
