"""The shower engine: depth steps along each incident axis and the energy deposits of EM,
hadronic and ionization-track components per step, with exact energy bookkeeping.

Every shower of a batch shares the same step structure: the readout layers (of the mesh around
the incident axis, or of the detector) are cut into sub-steps of at most 0.3 X0 and 0.05
lambda, followed by steps up to the back of the calorimeter along the incident direction. A
component stores, per shower and step, its mean calibrated signal, its radial profile (core
radius, tail radius and core probability in mm) and its sampling-fluctuation variance per GeV;
:mod:`showerformer.simulation.digitize` turns components into cell energies.

Bookkeeping per shower (MeV): ``deposited + leaked + invisible = incident kinetic energy``, where
deposited counts energy left in the calorimeter (EM-scale, before sampling), leaked what
escapes through its faces and invisible the non-EM energy lost to nuclear binding and
undetectable particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from showerformer.geometry import Geometry
from showerformer.simulation.beams import PARTICLES, BeamSample
from showerformer.simulation.detectors import SamplingCalorimeter
from showerformer.simulation.em import (
    PHOTON_MEAN_FREE_PATH,
    radial_parameters,
    sample_em_profiles,
    spot_count,
)
from showerformer.simulation.hadronic import (
    hadronic_radius,
    ionization_scale,
    sample_hadronic_profiles,
)

__all__ = ["Component", "ShowerBatch", "StepGrid", "build_grid", "develop"]

MAX_STEP_X0 = 0.3
MAX_STEP_LAMBDA = 0.05
PAIR_OFFSET = PHOTON_MEAN_FREE_PATH - 1.0  # X0, see develop()
TRACK_RADIUS_MM = 0.3  # lateral scale of an ionization track (delta rays)
TRACK_LANDAU_WIDTH = 0.3  # relative fluctuation of a MIP signal in one readout layer

_MASS = {p.pdg: p.mass for p in PARTICLES.values()}
_LAMBDA_FACTOR = {p.pdg: p.lambda_factor for p in PARTICLES.values()}
_CHARGED = {p.pdg: p.charge != 0 for p in PARTICLES.values()}
_EM = {p.pdg: p.is_em for p in PARTICLES.values()}


@dataclass
class StepGrid:
    """Depth steps along the incident axes of a batch.

    Attributes:
        edges: along-axis positions of the step boundaries from the entry point, (N, K+1) mm.
        layer: readout layer (geometry layer index) of each step, -1 when not read out, (K,).
        phys: physical detector layer at each step's middle, (N, K).
        cos_tilt: cosine of the angle between the axis and the layer normal, (N,).
        x0, lam: cumulative radiation / interaction lengths along the axis at the edges,
            (N, K+1).
        back: along-axis position of the back face, (N,) mm.
    """

    edges: np.ndarray
    layer: np.ndarray
    phys: np.ndarray
    cos_tilt: np.ndarray
    x0: np.ndarray
    lam: np.ndarray
    back: np.ndarray

    @property
    def n_steps(self) -> int:
        return self.edges.shape[1] - 1


def _along(detector: SamplingCalorimeter, s: np.ndarray, cos: np.ndarray, unit: str
           ) -> np.ndarray:
    """Cumulative X0 or lambda along a tilted axis at along-axis positions s (mm)."""
    return detector.to_units(s * cos, unit) / cos


def _from_along(detector: SamplingCalorimeter, t: np.ndarray, cos: np.ndarray, unit: str
                ) -> np.ndarray:
    return detector.from_units(t * cos, unit) / cos


def _subdivide(z: np.ndarray, detector: SamplingCalorimeter) -> tuple[np.ndarray, np.ndarray]:
    """Cut the intervals between depths ``z`` (mm) into sub-steps; (edges, interval of step)."""
    x0 = detector.to_units(z, "x0")
    lam = detector.to_units(z, "lambda")
    n_sub = np.maximum(np.ceil(np.maximum(np.diff(x0) / MAX_STEP_X0,
                                          np.diff(lam) / MAX_STEP_LAMBDA)), 1).astype(np.int64)
    owner = np.repeat(np.arange(len(z) - 1), n_sub)
    first = np.concatenate([[0], np.cumsum(n_sub)[:-1]])
    frac = (np.arange(n_sub.sum()) - first[owner] + 1) / n_sub[owner]
    edges = np.concatenate([[z[0]], z[owner] + frac * (z[owner + 1] - z[owner])])
    return edges, owner


def build_grid(detector: SamplingCalorimeter, geometry: Geometry, cos_tilt: np.ndarray,
               readout: str) -> StepGrid:
    """Steps for a batch with incident-axis tilts ``cos_tilt`` (N,).

    Arguments:
        detector: the calorimeter.
        geometry: the cell geometry (its ``z_edges`` are the mesh when ``readout="geometry"``).
        cos_tilt: cosine of the tilt of each incident axis from the layer normal, (N,).
        readout: ``"geometry"`` (layers are mesh slices along the axis, CaloChallenge ds2/ds3
            and Par04) or ``"detector"`` (layers are the detector's readout layers).

    Returns:
        The :class:`StepGrid`.
    """
    cos = np.asarray(cos_tilt, dtype=np.float64)
    n = len(cos)
    back = detector.depth / cos
    if readout == "geometry":
        mesh, owner = _subdivide(np.asarray(geometry.z_edges, dtype=np.float64), detector)
        end = mesh[-1]
        beyond = detector.total_x0 - float(detector.to_units(np.array(end), "x0"))
        extra = max(float(np.max(back, initial=end) - end), 0.0)
        n_ext = max(1, math.ceil(max(beyond, 0.0) / MAX_STEP_X0 + extra / 10.0))
        ext = end + np.maximum(back - end, 0.0)[:, None] * (np.arange(1, n_ext + 1) / n_ext)
        edges = np.concatenate([np.broadcast_to(mesh, (n, len(mesh))), ext], axis=1)
        layer = np.concatenate([owner, np.full(n_ext, -1)])
    elif readout == "detector":
        zk = np.concatenate([[0.0], detector.layer_array("z1")])
        base, owner = _subdivide(zk, detector)
        edges = base[None, :] / cos[:, None]
        layer = detector.layer_array("readout")[owner]
    else:
        raise ValueError(f"readout must be 'geometry' or 'detector', not {readout!r}")
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1]) * cos[:, None]
    phys = detector.layer_of_depth(np.minimum(mid, detector.depth * (1 - 1e-12)))
    phys = np.where(phys < 0, detector.n_layers - 1, phys)
    c = cos[:, None]
    return StepGrid(edges, layer.astype(np.int64), phys, cos,
                    _along(detector, edges, c, "x0"), _along(detector, edges, c, "lambda"), back)


@dataclass
class Component:
    """Energy deposits of one kind of shower component, per shower and step.

    Attributes:
        kind: ``"em"``, ``"hadronic"`` or ``"track"``.
        signal: mean calibrated signal per step, (N, K) MeV.
        r1, r2, p: core radius, tail radius (mm) and core probability per step, (N, K).
        n_spots: GFlash number of energy spots of the component per shower (uncapped), (N,).
    """

    kind: str
    signal: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    p: np.ndarray
    n_spots: np.ndarray


@dataclass
class ShowerBatch:
    """A batch of developed showers before digitization.

    Attributes:
        beam: the incident particles.
        grid: the depth steps.
        components: EM, hadronic and track components (absent ones omitted).
        deposited, leaked, invisible: bookkeeping in MeV, (N,).
        start: along-axis depth of the shower start (photon conversion, first hadronic
            interaction; 0 for e+-), (N,) mm.
    """

    beam: BeamSample
    grid: StepGrid
    components: list[Component] = field(default_factory=list)
    deposited: np.ndarray | None = None
    leaked: np.ndarray | None = None
    invisible: np.ndarray | None = None
    start: np.ndarray | None = None


def _gamma_steps(u: np.ndarray, alpha: np.ndarray, beta: np.ndarray, energy: np.ndarray
                 ) -> np.ndarray:
    """Energy per step of gamma profiles: u (N, K+1) depths from the start, (N, K) MeV."""
    cdf = special.gammainc(alpha[:, None], beta[:, None] * u)
    return energy[:, None] * np.diff(cdf, axis=1)


def _em_component(detector: SamplingCalorimeter, grid: StepGrid, energy: np.ndarray,
                  start: np.ndarray, alpha: np.ndarray, beta: np.ndarray, t_max: np.ndarray,
                  comp: np.ndarray) -> tuple[Component, np.ndarray]:
    """EM deposits (GFlash radial profile) of gamma profiles in X0 starting at ``start`` (mm)."""
    x0_start = _along(detector, start, grid.cos_tilt, "x0")
    u = np.maximum(grid.x0 - x0_start[:, None], 0.0)
    steps = _gamma_steps(u, alpha, beta, energy)
    u_mid = 0.5 * (u[:, 1:] + u[:, :-1])
    tau = u_mid / t_max[:, None]
    ln_e = np.log(np.maximum(energy, 1.0) / 1000.0)[:, None]
    r_c, r_t, p = radial_parameters(
        tau, ln_e, detector.compartment_array("z_eff")[comp][:, None],
        detector.compartment_array("f_s")[comp][:, None],
        detector.compartment_array("e_mip")[comp][:, None])
    rm = detector.layer_array("moliere")[grid.phys]
    n_spots = spot_count(energy, detector.compartment_array("stochastic")[comp])
    return Component("em", steps, r_c * rm, r_t * rm, p, n_spots), steps


def develop(
    detector: SamplingCalorimeter,
    geometry: Geometry,
    beam: BeamSample,
    rng: np.random.Generator,
    *,
    readout: str = "geometry",
    fluctuate: bool = True,
) -> ShowerBatch:
    """Develop the showers of a batch: longitudinal and radial profiles of every component.

    The random draws are made in a fixed order (photon conversion depths, EM profiles,
    first interactions, hadronic profiles), so one generator state gives one result.

    Arguments:
        detector: the calorimeter.
        geometry: the cell geometry (for the mesh when ``readout="geometry"``).
        beam: incident particles (N showers).
        rng: random generator.
        readout: ``"geometry"`` or ``"detector"``, see :func:`build_grid`.
        fluctuate: False gives mean profiles (no shower-to-shower fluctuations of the shapes,
            first interaction and EM fraction at their means).

    Returns:
        The :class:`ShowerBatch` with components and bookkeeping.
    """
    n = len(beam)
    pdg = np.asarray(beam.pdg)
    energy = np.asarray(beam.energy, dtype=np.float64)
    cos = np.clip(np.sin(np.asarray(beam.theta, dtype=np.float64)), 0.05, 1.0)
    grid = build_grid(detector, geometry, cos, readout)
    is_em = np.array([_EM.get(int(p), False) for p in pdg], dtype=bool)
    is_photon = pdg == 22
    had = ~is_em
    batch = ShowerBatch(beam, grid)
    deposited = np.zeros(n)
    leaked = np.zeros(n)
    invisible = np.zeros(n)
    start = np.zeros(n)
    back = grid.back
    shower_comp = detector.shower_compartment()

    def comp_at(s: np.ndarray) -> np.ndarray:
        lay = detector.layer_of_depth(np.clip(s * cos, 0.0, detector.depth * (1 - 1e-12)))
        return shower_comp[np.where(lay < 0, detector.n_layers - 1, lay)]

    # ------------------------------------------------------------------ EM particles
    conv = rng.exponential(PHOTON_MEAN_FREE_PATH, n) if fluctuate \
        else np.full(n, PHOTON_MEAN_FREE_PATH)
    if is_em.any():
        e_em = np.where(is_em, energy, 0.0)
        s0 = np.where(is_photon, _from_along(detector, conv, cos, "x0"), 0.0)
        start = np.where(is_em, s0, start)
        comp = comp_at(s0)
        prof = sample_em_profiles(e_em, detector.compartment_array("e_critical")[comp],
                                  detector.compartment_array("z_eff")[comp],
                                  detector.compartment_array("f_s")[comp],
                                  detector.compartment_array("e_mip")[comp], rng, fluctuate)
        # a converted photon showers as its e+e- pair, whose cascade is 9/7 - 1 X0 ahead of a
        # single electron's (PDG: t_max = ln y + C with C_gamma - C_e = 1 X0)
        t_max = np.where(is_photon, np.maximum(prof.t_max - PAIR_OFFSET, 0.5 * prof.t_max),
                         prof.t_max)
        beta = (prof.alpha - 1) / t_max
        em_comp, steps = _em_component(detector, grid, e_em, s0, prof.alpha, beta, t_max, comp)
        inside = steps.sum(axis=1)
        deposited += inside
        leaked += e_em - inside
        batch.components.append(em_comp)
    # ------------------------------------------------------------------ hadrons
    t_int = rng.exponential(1.0, n) if fluctuate else np.ones(n)
    if had.any():
        mass = np.array([_MASS.get(int(p), 0.0) for p in pdg])
        lam_factor = np.array([_LAMBDA_FACTOR.get(int(p), 1.0) for p in pdg])
        charged = np.array([_CHARGED.get(int(p), False) for p in pdg]) & had
        baryon = np.isin(np.abs(pdg), (2212, 2112))
        s_int = np.where(had, _from_along(detector, t_int * lam_factor, cos, "lambda"), 0.0)
        start = np.where(had, s_int, start)
        # ionization track up to the interaction (or the back, or until the hadron stops)
        k_steps = grid.n_steps
        track = np.zeros((n, k_steps))
        kinetic = np.where(had, energy, 0.0)
        dedx = detector.layer_array("dedx")[grid.phys]  # (N, K) MeV/mm at minimum ionization
        stop = np.minimum(s_int, back)
        for k in range(k_steps):
            lo, hi = grid.edges[:, k], grid.edges[:, k + 1]
            if np.all(lo >= stop):
                break
            length = np.clip(np.minimum(hi, stop) - lo, 0.0, None)
            loss = np.where(charged, dedx[:, k] * length * ionization_scale(kinetic, mass), 0.0)
            loss = np.minimum(loss, kinetic)
            track[:, k] = loss
            kinetic = kinetic - loss
        e_track = track.sum(axis=1)
        deposited += e_track
        interacts = had & (s_int < back) & (kinetic > 0)
        punch = had & ~interacts
        leaked += np.where(punch, kinetic, 0.0)
        e_avail = np.where(interacts, kinetic, 0.0)
        comp = comp_at(s_int)
        hp = sample_hadronic_profiles(e_avail, baryon,
                                      detector.compartment_array("e_over_h")[comp], rng,
                                      fluctuate)
        e_em = e_avail * hp.f_em
        e_h = e_avail - e_em
        t_em = np.maximum((hp.alpha_em - 1) / hp.beta_em, 1.0)
        em_comp, steps = _em_component(detector, grid, e_em, s_int, hp.alpha_em, hp.beta_em,
                                       t_em, comp)
        inside = steps.sum(axis=1)
        deposited += inside
        leaked += e_em - inside
        # non-EM part on the lambda scale
        lam_start = _along(detector, s_int, cos, "lambda")
        u = np.maximum(grid.lam - lam_start[:, None], 0.0)
        h_steps = _gamma_steps(u, hp.alpha_h, hp.beta_h, e_h)
        h_inside = h_steps.sum(axis=1)
        vis = 1.0 - hp.f_invisible
        deposited += h_inside * vis
        invisible += h_inside * hp.f_invisible
        leaked += e_h - h_inside
        u_mid = 0.5 * (u[:, 1:] + u[:, :-1])
        radius = hadronic_radius(u_mid, detector.layer_array("lambda_mm")[grid.phys],
                                 hp.lateral[:, None])
        c_h = (detector.compartment_array("stochastic")
               * detector.compartment_array("hadronic_factor"))[comp]
        h_comp = Component("hadronic", h_steps * vis[:, None], radius, radius,
                           np.ones_like(radius), spot_count(e_h * vis, c_h))
        response = detector.layer_array("mip_response")[grid.phys]
        t_comp = Component("track", track * response, np.full_like(track, TRACK_RADIUS_MM),
                           np.full_like(track, TRACK_RADIUS_MM), np.ones_like(track),
                           np.zeros(n))
        if batch.components:  # merge the cascade EM part into the EM particles' component
            em0 = batch.components[0]
            use = (em_comp.signal.sum(axis=1) > 0)[:, None]
            for name in ("signal", "r1", "r2", "p"):
                setattr(em0, name, np.where(use, getattr(em_comp, name), getattr(em0, name)))
            em0.n_spots = np.where(use[:, 0], em_comp.n_spots, em0.n_spots)
        else:
            batch.components.append(em_comp)
        batch.components += [h_comp, t_comp]
    batch.deposited, batch.leaked, batch.invisible = deposited, leaked, invisible
    batch.start = start
    return batch
