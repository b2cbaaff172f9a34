"""Evaluation: per-user metrics with bootstrap and paired intervals, the meta-learned predictor, the comparison of
methods on the same users, and the baselines (functions of data and parameters)."""

from jaxrec.evaluation.compare import compare_stats, concat_stats, evaluate_methods
from jaxrec.evaluation.predict import TRACES, collect, meta_evaluate, meta_predict

__all__ = ["TRACES", "collect", "compare_stats", "concat_stats", "evaluate_methods", "meta_evaluate", "meta_predict"]
