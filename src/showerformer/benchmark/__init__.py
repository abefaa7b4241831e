"""End-to-end benchmarks behind ``showerformer benchmark``: data, training, evaluation, a table."""

from showerformer.benchmark.point_flow import run_point_flow_benchmark
from showerformer.benchmark.regression import SEED_REFERENCE, run_regression_benchmark

__all__ = ["SEED_REFERENCE", "run_point_flow_benchmark", "run_regression_benchmark"]
