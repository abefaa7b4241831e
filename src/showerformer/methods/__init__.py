"""Training methods that wrap any network of the right signature (flow matching, ...)."""

from showerformer.methods.flow_matching import (
    TIME_DISTRIBUTIONS,
    PathSample,
    flow_matching_loss,
    linear_path,
    masked_mse,
    ot_pair,
    ot_pairing_indices,
    sample_path,
    sample_time,
)

__all__ = [
    "TIME_DISTRIBUTIONS",
    "PathSample",
    "flow_matching_loss",
    "linear_path",
    "masked_mse",
    "ot_pair",
    "ot_pairing_indices",
    "sample_path",
    "sample_time",
]
