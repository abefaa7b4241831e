"""End-to-end benchmarks behind ``showerformer benchmark``: data, training, evaluation, a table."""

from showerformer.benchmark.regression import SEED_REFERENCE, run_regression_benchmark

__all__ = ["SEED_REFERENCE", "run_regression_benchmark"]
