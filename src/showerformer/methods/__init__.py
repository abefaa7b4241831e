"""Training methods that wrap any network of the right signature (flow matching, score diffusion)."""

from showerformer.methods.diffusion import (
    SDE,
    SDES,
    VESDE,
    VPSDE,
    SubVPSDE,
    correlation_loss,
    denoising_score_matching_loss,
    diffusion_schedule,
    make_sde,
    probability_flow,
    tweedie_denoise,
)
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
    "SDE",
    "SDES",
    "TIME_DISTRIBUTIONS",
    "VESDE",
    "VPSDE",
    "PathSample",
    "SubVPSDE",
    "correlation_loss",
    "denoising_score_matching_loss",
    "diffusion_schedule",
    "flow_matching_loss",
    "linear_path",
    "make_sde",
    "masked_mse",
    "ot_pair",
    "ot_pairing_indices",
    "probability_flow",
    "sample_path",
    "sample_time",
    "tweedie_denoise",
]
