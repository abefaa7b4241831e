"""Digitization: developed showers -> calibrated cell energies of any geometry, with spot
(shower-shape) and sampling fluctuations, electronic noise and the readout threshold.

Two equivalent routes:

- :func:`digitize_mesh`, for cylindrical meshes centred on the incident axis (CaloChallenge
  ds1/ds2/ds3, Par04): the radial profile is integrated analytically over every (step, r-bin)
  and spread evenly in alpha, then the fluctuations are drawn per cell. GFlash deposits a
  shower as N equal energy spots, so a cell with mean energy mu holds about N mu / E spots;
  sampling adds variance c^2 E (c the stochastic term, E in GeV). Both are drawn at once:
  per readout layer the total is Gamma-distributed with variance c^2 E_layer, and it is shared
  among the layer's cells (and the part outside the mesh) by a Dirichlet draw with
  concentrations mu / q, q = E/N + c^2 (GeV), which gives every cell the variance of N spots
  plus sampling while the layer keeps the sampling variance only. No per-spot work: the cost is
  a few Gamma draws per cell.
- :func:`digitize_spots`, for any geometry and incidence (Cartesian grids, point clouds, tilted
  axes in the detector frame): explicit energy spots (at most ``max_spots`` per component and
  shower, placed in proportion to the step energies) located with ``Geometry.locate``, then a
  Gamma sampling fluctuation per cell (variance c^2 mu).

Energies are calibrated (visible / EM sampling fraction of the layer); the threshold and noise
are converted from the detector's visible scale layer by layer.

References:
    G. Grindhammer, S. Peters, hep-ex/0001020 (energy spots, sampling fluctuations);
    Geant4 GFlash ``GFlashSamplingShowerParameterisation::ApplySampling``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from showerformer.geometry import CylindricalGeometry, Geometry
from showerformer.simulation.detectors import SamplingCalorimeter
from showerformer.simulation.em import radial_cdf
from showerformer.simulation.engine import TRACK_LANDAU_WIDTH, Component, ShowerBatch

__all__ = [
    "LayerResponse",
    "SparseCells",
    "apply_noise_threshold",
    "digitize_mesh",
    "digitize_spots",
    "layer_response",
]

_SPOTS_PER_PASS = 1_000_000  # bound on the spots held in memory at once


@dataclass
class LayerResponse:
    """Readout constants per geometry layer (NaN where no detector layer is read out).

    Attributes:
        c: EM stochastic term, sqrt(GeV).
        hadronic_factor: hadronic / EM sampling fluctuations.
        mip: calibrated MIP signal in the layer at normal incidence, MeV.
        f_em: EM sampling fraction (visible / calibrated).
        threshold, noise: per cell on the calibrated scale, MeV.
        z: depth of the layer centre in mm (detector depth at normal incidence).
    """

    c: np.ndarray
    hadronic_factor: np.ndarray
    mip: np.ndarray
    f_em: np.ndarray
    threshold: np.ndarray
    noise: np.ndarray
    z: np.ndarray

    def variance_per_gev(self, kind: str) -> np.ndarray:
        """Sampling variance per GeV of signal, c^2 (GeV), of a component kind, (L,)."""
        if kind == "em":
            c2 = self.c**2
        elif kind == "hadronic":
            c2 = (self.c * self.hadronic_factor) ** 2
        else:
            c2 = TRACK_LANDAU_WIDTH**2 * self.mip / 1000.0
        return np.nan_to_num(c2, nan=0.0)


def layer_response(detector: SamplingCalorimeter, geometry: Geometry, readout: str
                   ) -> LayerResponse:
    """The :class:`LayerResponse` of each geometry layer.

    Arguments:
        detector: the calorimeter.
        geometry: the cell geometry.
        readout: ``"geometry"`` (mesh slices: the detector layer at each slice's middle) or
            ``"detector"`` (geometry layer = detector readout id).
    """
    n_l = geometry.n_layers
    comp = detector.layer_array("compartment")
    factor = np.array([c.hadronic_sampling_factor for c in detector.compartments])[comp]
    mip_cal = detector.layer_array("mip") * detector.layer_array("mip_response")
    if readout == "geometry":
        ze = np.asarray(geometry.z_edges, dtype=np.float64)
        mid = 0.5 * (ze[1:] + ze[:-1])
        lay = detector.layer_of_depth(mid)
        ok = lay >= 0
        lay = np.maximum(lay, 0)
        per_mm = mip_cal / (detector.layer_array("z1") - detector.layer_array("z0"))

        def pick(values: np.ndarray) -> np.ndarray:
            return np.where(ok, values[lay], np.nan)

        c, f_em, fac = pick(detector.layer_array("c")), pick(detector.layer_array("f_em")), \
            pick(factor)
        mip = pick(per_mm) * np.diff(ze)
        z = mid
    else:
        def per_id(values: np.ndarray, reduce=np.mean) -> np.ndarray:
            out = np.full(n_l, np.nan)
            rid = detector.layer_array("readout")
            for i in range(min(n_l, detector.n_readout)):
                sel = rid == i
                if sel.any():
                    out[i] = reduce(values[sel])
            return out

        c, f_em, fac = (per_id(detector.layer_array("c")), per_id(detector.layer_array("f_em")),
                        per_id(factor))
        mip = per_id(mip_cal, np.sum)
        z = per_id(0.5 * (detector.layer_array("z0") + detector.layer_array("z1")))
    with np.errstate(invalid="ignore", divide="ignore"):
        threshold = detector.threshold / f_em
        noise = detector.noise / f_em
    return LayerResponse(c, fac, mip, f_em, threshold, noise, z)


def apply_noise_threshold(values: np.ndarray, layer: np.ndarray, resp: LayerResponse,
                          rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (when the detector has any) and zero cells below the threshold.

    Arguments:
        values: calibrated cell energies in MeV, any shape.
        layer: geometry layer of each value (broadcast to ``values``).
        resp: the layer constants.
        rng: random generator (used only when there is noise).

    Returns:
        The digitized energies (a new array), >= 0.
    """
    thr = np.nan_to_num(resp.threshold, nan=0.0)[layer]
    noise = np.nan_to_num(resp.noise, nan=0.0)
    out = values.copy()
    if np.any(noise > 0):
        out += rng.standard_normal(values.shape) * noise[layer]
    out[out < np.maximum(thr, 0.0)] = 0.0
    out[out < 0] = 0.0
    return out


# ---------------------------------------------------------------------------- analytic mesh
@dataclass
class _MeshTables:
    layer_of_cell: np.ndarray
    r_bin: np.ndarray
    inv_alpha: np.ndarray
    r_edges: np.ndarray  # (L, max_nr + 1), +inf padding
    cell_start: np.ndarray  # first cell of each layer (L,)
    has_cells: np.ndarray  # (L,) bool


def _mesh_tables(geometry: CylindricalGeometry) -> _MeshTables:
    cache = geometry.__dict__.setdefault("_simulation_mesh_tables", None)
    if cache is not None:
        return cache
    n_l = geometry.n_layers
    max_nr = max((lay.n_r for lay in geometry.layers), default=0)
    r_edges = np.full((n_l, max_nr + 1), np.inf)
    for i, lay in enumerate(geometry.layers):
        if lay.n_r > 0:
            r_edges[i, : lay.n_r + 1] = lay.r_edges
        else:
            r_edges[i, 0] = 0.0
    n_alpha = np.array([lay.n_alpha for lay in geometry.layers])
    tables = _MeshTables(
        geometry.layer_of_cell, geometry.r_bin,
        1.0 / n_alpha[geometry.layer_of_cell],
        r_edges, geometry.layer_offsets[:-1].copy(), geometry.cells_per_layer() > 0)
    geometry.__dict__["_simulation_mesh_tables"] = tables
    return tables


def _segment_sum(values: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    """Sums over consecutive segments beginning at ``starts`` (non-empty segments)."""
    return np.add.reduceat(values, starts, axis=axis)


def digitize_mesh(batch: ShowerBatch, geometry: CylindricalGeometry, resp: LayerResponse,
                  rng: np.random.Generator, *, fluctuate: bool = True) -> np.ndarray:
    """Calibrated cell energies of a cylindrical mesh around the incident axis (no threshold).

    Arguments:
        batch: developed showers (steps with mesh or detector readout layers).
        geometry: the cylindrical mesh; its layers are indexed by the grid's step layers.
        resp: per-layer readout constants.
        rng: random generator.
        fluctuate: False returns the mean cell energies.

    Returns:
        (N, n_cells) float64 calibrated energies in MeV.
    """
    tab = _mesh_tables(geometry)
    n = len(batch.beam)
    n_l = geometry.n_layers
    grid = batch.grid
    sel = np.flatnonzero((grid.layer >= 0) & (grid.layer < n_l))
    out = np.zeros((n, geometry.n_cells))
    if len(sel) == 0:
        return out
    lay_k = grid.layer[sel]
    if np.any(np.diff(lay_k) < 0):
        raise ValueError("step layers must not decrease with depth")
    starts = np.flatnonzero(np.concatenate([[True], np.diff(lay_k) > 0]))
    layers_present = lay_k[starts]
    edges = tab.r_edges[lay_k]  # (K', nr+1) mm
    loc = tab.layer_of_cell
    cells_ok = tab.has_cells[layers_present]
    cell_starts = tab.cell_start[layers_present[cells_ok]]
    for comp in batch.components:
        sig = comp.signal[:, sel]
        if not sig.any():
            continue
        cdf = radial_cdf(edges[None, :, :], comp.r1[:, sel, None], comp.r2[:, sel, None],
                         comp.p[:, sel, None])
        contrib = sig[:, :, None] * np.diff(cdf, axis=2)  # (N, K', nr)
        mu = np.zeros((n, n_l, edges.shape[1] - 1))
        mu[:, layers_present] = _segment_sum(contrib, starts, axis=1)
        e_layer = np.zeros((n, n_l))
        e_layer[:, layers_present] = _segment_sum(sig, starts, axis=1)
        mu_cells = mu[:, loc, tab.r_bin] * tab.inv_alpha  # (N, C)
        if not fluctuate:
            out += mu_cells
            continue
        mu_out = np.maximum(e_layer - mu.sum(axis=2), 0.0)
        c2 = resp.variance_per_gev(comp.kind)  # (L,)
        total = comp.signal.sum(axis=1)
        q_spot = np.where(comp.n_spots > 0, total / 1000.0 / np.maximum(comp.n_spots, 1e-9), 0.0)
        q = np.maximum(q_spot[:, None] + c2[None, :], 1e-12)  # (N, L) GeV
        g_cells = rng.standard_gamma(mu_cells / 1000.0 / q[:, loc])
        g_out = rng.standard_gamma(mu_out / 1000.0 / q)
        norm = g_out.copy()
        if len(cell_starts):
            norm[:, layers_present[cells_ok]] += _segment_sum(g_cells, cell_starts, axis=1)
        safe_c2 = np.where(c2 > 0, c2, 1.0)
        sampled = np.where(c2 > 0, safe_c2 * rng.standard_gamma(e_layer / 1000.0 / safe_c2)
                           * 1000.0, e_layer)
        # share of each cell in its layer (<= 1; computed first so tiny norms cannot overflow)
        share = np.divide(g_cells, norm[:, loc], out=np.zeros_like(g_cells),
                          where=norm[:, loc] > 0)
        out += share * sampled[:, loc]
    return out


# ---------------------------------------------------------------------------- explicit spots
@dataclass
class SparseCells:
    """Digitized showers as non-zero cells, sorted by (shower, cell).

    Attributes:
        rows: shower index, (M,) int64.
        cells: cell index, (M,) int64.
        values: calibrated energy in MeV, (M,) float64.
        n: number of showers.
    """

    rows: np.ndarray
    cells: np.ndarray
    values: np.ndarray
    n: int

    def dense(self, n_cells: int) -> np.ndarray:
        """(n, n_cells) float64 array."""
        out = np.zeros((self.n, n_cells))
        out[self.rows, self.cells] = self.values
        return out


def _spot_positions(batch: ShowerBatch, comp: Component, rows: np.ndarray, k: np.ndarray,
                    u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along-axis depth and transverse offsets of spots of step k of shower rows; u (4, S)."""
    e = batch.grid.edges
    s = e[rows, k] + u[0] * (e[rows, k + 1] - e[rows, k])
    radius = np.where(u[1] < comp.p[rows, k], comp.r1[rows, k], comp.r2[rows, k])
    v = np.minimum(u[2], 1.0 - 1e-7)
    r = radius * np.sqrt(v / (1.0 - v))
    ang = 2.0 * np.pi * u[3]
    return s, r * np.cos(ang), r * np.sin(ang)


def _pass_bounds(per_shower: np.ndarray) -> list[int]:
    """Shower ranges holding at most about ``_SPOTS_PER_PASS`` spots each (at least one
    shower per range)."""
    cum = np.cumsum(per_shower)
    bounds = [0]
    while bounds[-1] < len(per_shower):
        lo = bounds[-1]
        base = cum[lo - 1] if lo > 0 else 0
        hi = int(np.searchsorted(cum, base + _SPOTS_PER_PASS, side="right"))
        bounds.append(max(hi, lo + 1))
    return bounds


def digitize_spots(
    batch: ShowerBatch,
    detector: SamplingCalorimeter,
    geometry: Geometry,
    resp: LayerResponse,
    rng: np.random.Generator,
    *,
    frame: str = "detector",
    readout: str = "detector",
    max_spots: int = 20_000,
    fluctuate: bool = True,
) -> tuple[SparseCells, np.ndarray]:
    """Deposit explicit energy spots into the cells of any geometry (no threshold).

    Arguments:
        batch: developed showers.
        detector: the calorimeter (for the depth of a spot and the lateral extent).
        geometry: the cell geometry.
        resp: per-layer readout constants.
        rng: random generator.
        frame: ``"axis"`` (cells around the incident axis) or ``"detector"`` (cells fixed
            in the detector; spots are placed along the tilted axis from the entry point:
            the axis has direction (cos theta, 0, sin theta) in (x, y, depth)).
        readout: ``"geometry"`` (layer from the geometry's z_edges along the axis) or
            ``"detector"`` (layer = detector readout id at the spot's depth).
        max_spots: spots per component and shower at most (GFlash counts above are capped;
            their energy is spread over fewer, heavier spots).
        fluctuate: False skips the sampling fluctuations (the spots stay random).

    Returns:
        The :class:`SparseCells` and the energy (MeV, deposited scale) of spots outside the
        calorimeter volume per shower, which the caller books as leaked.
    """
    n = len(batch.beam)
    grid = batch.grid
    k_steps = grid.n_steps
    lateral_leak = np.zeros(n)
    keys_all: list[np.ndarray] = []
    vals_all: list[np.ndarray] = []
    merged_keys: list[np.ndarray] = []
    merged_vals: list[np.ndarray] = []
    theta = np.asarray(batch.beam.theta, dtype=np.float64)
    sin_t, cos_t = grid.cos_tilt, np.cos(theta)
    x0, y0 = np.asarray(batch.beam.x0, np.float64), np.asarray(batch.beam.y0, np.float64)
    response = detector.layer_array("mip_response")[grid.phys]
    for comp in batch.components:
        sig = comp.signal
        total = sig.sum(axis=1)
        if not total.any():
            continue
        if comp.kind == "track":
            counts = (sig > 0).astype(np.int64)
        else:
            n_tot = np.minimum(np.maximum(comp.n_spots, 1.0), max_spots)
            expect = n_tot[:, None] * np.divide(sig, total[:, None],
                                                out=np.zeros_like(sig), where=total[:, None] > 0)
            counts = np.floor(expect + rng.random(sig.shape)).astype(np.int64)
        kept = np.where(counts > 0, sig, 0.0).sum(axis=1)
        boost = np.divide(total, kept, out=np.zeros(n), where=kept > 0)
        dep_per_signal = 1.0 / response if comp.kind == "track" else np.ones_like(sig)
        bounds = _pass_bounds(counts.sum(axis=1))
        for lo, hi in itertools.pairwise(bounds):
            cnt = counts[lo:hi].ravel()
            flat = np.repeat(np.arange(cnt.size), cnt)
            rows = lo + flat // k_steps
            k = flat % k_steps
            weight = sig[rows, k] / counts[rows, k] * boost[rows]
            u = rng.random((4, len(rows)))
            s, xp, yp = _spot_positions(batch, comp, rows, k, u)
            if frame == "axis":
                x, y = xp, yp
                depth = s * sin_t[rows]
                outside = np.zeros(len(rows), dtype=bool)
            else:
                depth = s * sin_t[rows] - xp * cos_t[rows]
                x = x0[rows] + s * cos_t[rows] + xp * sin_t[rows]
                y = y0[rows] + yp
                outside = (depth < 0) | (depth > detector.depth)
                if detector.half_width is not None:
                    hw = detector.half_width
                    outside |= (np.abs(x) > hw) | (np.abs(y) > hw)
            if readout == "geometry":
                layer = geometry.layer_of_z(s if frame == "axis" else depth)
            else:
                layer = detector.readout_of_depth(depth)
                layer = np.where(layer < geometry.n_layers, layer, -1)
            if outside.any():
                leak = (weight * dep_per_signal[rows, k])[outside]
                lateral_leak += np.bincount(rows[outside], weights=leak, minlength=n)
                layer = np.where(outside, -1, layer)
            cell = geometry.locate(x, y, layer=layer)
            ok = cell >= 0
            keys_all.append(rows[ok] * geometry.n_cells + cell[ok])
            vals_all.append(weight[ok])
        if keys_all:
            keys = np.concatenate(keys_all)
            vals = np.concatenate(vals_all)
            keys_all, vals_all = [], []
            uk, inv = np.unique(keys, return_inverse=True)
            mu = np.bincount(inv, weights=vals, minlength=len(uk))
            if fluctuate:
                lay = geometry.layer_of_cell[uk % geometry.n_cells]
                c2 = resp.variance_per_gev(comp.kind)[lay]
                safe = np.where(c2 > 0, c2, 1.0)
                mu = np.where(c2 > 0, safe * rng.standard_gamma(mu / 1000.0 / safe) * 1000.0, mu)
            merged_keys.append(uk)
            merged_vals.append(mu)
    if merged_keys:
        keys = np.concatenate(merged_keys)
        uk, inv = np.unique(keys, return_inverse=True)
        vals = np.bincount(inv, weights=np.concatenate(merged_vals), minlength=len(uk))
    else:
        uk, vals = np.zeros(0, np.int64), np.zeros(0)
    return SparseCells(uk // geometry.n_cells, uk % geometry.n_cells, vals, n), lateral_leak
