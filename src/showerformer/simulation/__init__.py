"""The built-in parametrized shower simulator: materials, detectors, beams, GFlash-style EM and
parametrized hadronic showers, digitization into any geometry, sharded dataset generation.

References:
    G. Grindhammer, S. Peters, hep-ex/0001020 (GFlash); D. E. Groom, NIM A572 (2007) 633;
    CaloChallenge 2022 (arXiv:2410.21611).
"""

from showerformer.simulation.beams import (
    PARTICLES,
    Beam,
    BeamSample,
    Particle,
    Spectrum,
    get_particle,
)
from showerformer.simulation.detectors import (
    DETECTORS,
    Compartment,
    Layer,
    SamplingCalorimeter,
    Sheet,
    get_detector,
)
from showerformer.simulation.engine import ShowerBatch, develop
from showerformer.simulation.materials import (
    MATERIALS,
    Material,
    effective_medium,
    get_material,
    mixture,
)
from showerformer.simulation.simulator import (
    DATASETS,
    MAX_SHOWERS,
    DatasetSpec,
    Simulator,
    estimate_file_bytes,
    parse_shard,
    simulate,
    simulate_to_file,
)

__all__ = [
    "DATASETS",
    "DETECTORS",
    "MATERIALS",
    "MAX_SHOWERS",
    "PARTICLES",
    "Beam",
    "BeamSample",
    "Compartment",
    "DatasetSpec",
    "Layer",
    "Material",
    "Particle",
    "SamplingCalorimeter",
    "Sheet",
    "ShowerBatch",
    "Simulator",
    "Spectrum",
    "develop",
    "effective_medium",
    "estimate_file_bytes",
    "get_detector",
    "get_material",
    "get_particle",
    "mixture",
    "parse_shard",
    "simulate",
    "simulate_to_file",
]
