"""Findings with ground truth: nodules, emphysema, the synthetic malignancy rule and Lung-RADS.

Nodules are drawn anti-aliased inside their bounding box with "raise-only" blending, so
vessels crossing a ground-glass nodule stay visible. The malignancy rule and the Lung-RADS
v2022 mapping are documented in ``synth/README.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.lungrads import nodule_category
from synth.anatomy import LUNG_LIKE, Anatomy, Tissue
from synth.raster import SmoothField, label_lut

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "calcified")
MARGINS = ("smooth", "lobulated", "spiculated")
LOCATIONS = ("isolated", "juxtapleural", "juxtavascular")

_TYPE_P = (0.55, 0.12, 0.20, 0.13)
_LOC_P = (0.5, 0.3, 0.2)
_TYPE_LOGIT = {"solid": 0.0, "part_solid": 1.0, "ground_glass": -1.2}
_MARGIN_LOGIT = {"smooth": -0.5, "lobulated": 0.6, "spiculated": 1.6}


def malignancy_score(nodule_type: str, margin: str, diameter_mm: float) -> float:
    """The synthetic malignancy rule: a logistic score in [0, 1].

    ``logit = -6.2 + 2.2·ln(d) + T[type] + M[margin]`` with T = solid 0, part-solid +1.0,
    ground-glass -1.2 and M = smooth -0.5, lobulated +0.6, spiculated +1.6; calcified
    nodules are benign (score 0.01). A nodule is malignant when the score is >= 0.5.
    """
    if nodule_type == "calcified":
        return 0.01
    z = -6.2 + 2.2 * math.log(diameter_mm) + _TYPE_LOGIT[nodule_type] + _MARGIN_LOGIT[margin]
    return 1.0 / (1.0 + math.exp(-z))


def lungrads_category(
    nodule_type: str, margin: str, location: str, diameter_mm: float, solid_diameter_mm: float
) -> str:
    """Lung-RADS v2022 baseline category of one synthetic nodule (``pipeline.lungrads``):
    smooth juxtapleural solid nodules get the perifissural exception, spiculation is 4X."""
    return nodule_category(
        nodule_type,
        diameter_mm,
        solid_diameter_mm,
        juxtapleural_smooth=location == "juxtapleural" and margin == "smooth",
        suspicious=margin == "spiculated",
    )


@dataclass
class Nodule:
    """One nodule: what it is, where, and its truth."""

    finding_id: int
    type: str
    margin: str
    location: str
    diameter_mm: float
    solid_diameter_mm: float
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    region: str = ""
    hu: float = 0.0
    solid_hu: float = 0.0
    lobes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    lobe_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spikes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    spike_len: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spike_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    volume_mm3: float = 0.0

    @property
    def malignancy_score(self) -> float:
        return malignancy_score(self.type, self.margin, self.diameter_mm)

    @property
    def malignant(self) -> bool:
        return self.malignancy_score >= 0.5

    @property
    def category(self) -> str:
        return lungrads_category(
            self.type, self.margin, self.location, self.diameter_mm, self.solid_diameter_mm
        )

    @property
    def extent_mm(self) -> float:
        """Radius (mm) of a sphere containing the whole nodule, spicules included."""
        r = self.diameter_mm / 2 * (1.35 if len(self.lobes) else 1.0)
        return r + (float(self.spike_len.max()) if len(self.spike_len) else 0.0)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sample_nodules(rng: np.random.Generator, mean_count: float, max_count: int = 6) -> list[Nodule]:
    """Draw the kind, size and margin of a study's nodules (zero to ``max_count``)."""
    n = min(int(rng.poisson(mean_count)), max_count)
    out = []
    for fid in range(n):
        typ = str(rng.choice(NODULE_TYPES, p=_TYPE_P))
        if typ == "calcified":
            d = rng.uniform(3, 10)
            margin = "smooth"
        else:
            d = 3.0 * (35.0 / 3.0) ** (rng.uniform() ** 1.6)
            choices = MARGINS if typ != "ground_glass" else MARGINS[:2]
            probs = (0.5, 0.3, 0.2) if typ != "ground_glass" else (0.65, 0.35)
            margin = str(rng.choice(choices, p=probs))
        if typ == "part_solid":
            d = max(d, 6.0)
        solid_d = (
            d
            if typ in ("solid", "calcified")
            else (d * rng.uniform(0.25, 0.7) if typ == "part_solid" else 0.0)
        )
        loc = str(rng.choice(LOCATIONS, p=_LOC_P))
        hu = {
            "solid": rng.uniform(15, 55),
            "part_solid": rng.uniform(-650, -500),
            "ground_glass": rng.uniform(-680, -480),
            "calcified": rng.uniform(350, 900),
        }[typ]
        nod = Nodule(
            fid, typ, margin, loc, float(d), float(solid_d), hu=float(hu), solid_hu=float(rng.uniform(10, 50))
        )
        if margin in ("lobulated", "spiculated"):
            k = int(rng.integers(3, 6))
            nod.lobes = _unit_vectors(rng, k)
            nod.lobe_w = rng.uniform(0.15, 0.35, k)
        if margin == "spiculated":
            k = int(rng.integers(6, 14))
            nod.spikes = _unit_vectors(rng, k)
            nod.spike_len = rng.uniform(0.5, 1.4, k) * d / 2 + 2.0
            nod.spike_w = rng.uniform(0.5, 1.1, k)
        out.append(nod)
    return out


def region_label(anat: Anatomy, center: np.ndarray) -> str:
    """A lobe-ish region: RUL/RML/RLL/LUL/LLL from side, height and depth."""
    p = anat.params
    x, y, z = center
    t = (z - p.z_base) / p.lung_height
    ant = (y - p.center_y) < -0.1 * p.cavity_b
    if x < p.center_x:  # patient right
        if t > 0.58:
            return "RUL"
        return "RML" if (t > 0.3 and ant) else "RLL"
    return "LUL" if (t > 0.5 or (t > 0.3 and ant)) else "LLL"


def place_nodules(rng: np.random.Generator, anat: Anatomy, nodules: list[Nodule]) -> list[Nodule]:
    """Choose each nodule's centre by its location kind; nodules that cannot be placed are dropped."""
    lm = anat.lung
    pts_idx = np.argwhere(lm.mask)
    pts = lm.grid.to_mm(pts_idx.astype(float))
    dist = lm.dist[lm.mask]
    vs = anat.vessels
    vmid = 0.5 * (vs.p0 + vs.p1)
    vr = 0.5 * (vs.r0 + vs.r1)
    vd = lm.distance(vmid) if len(vs) else np.zeros(0)
    placed: list[Nodule] = []
    centres: list[tuple[np.ndarray, float]] = []
    jitter = np.asarray(lm.grid.spacing) * 0.5
    for nod in nodules:
        r = nod.diameter_mm / 2
        c = None
        for _ in range(40):
            if nod.location == "juxtavascular" and len(vs):
                ok = np.flatnonzero((vr > 1.0) & (vr < 4.5) & (vd > r + vr + 3))
                if len(ok) == 0:
                    break
                s = int(rng.choice(ok))
                v = vs.p1[s] - vs.p0[s]
                axis = v / (np.linalg.norm(v) + 1e-9)
                perp = rng.standard_normal(3)
                perp -= (perp @ axis) * axis
                perp /= np.linalg.norm(perp) + 1e-9
                cand = vs.p0[s] + rng.uniform(0.3, 0.7) * v + perp * (vr[s] + 0.75 * r)
            elif nod.location == "juxtapleural":
                tol = max(2.0, 0.35 * r)
                ok = np.flatnonzero(np.abs(dist - (0.85 * r + 1.0)) < tol)
                if len(ok) == 0:
                    break
                cand = pts[int(rng.choice(ok))] + rng.uniform(-1, 1, 3) * jitter * 0.5
            else:
                ok = np.flatnonzero(dist > r + 6)
                if len(ok) == 0:
                    break
                cand = pts[int(rng.choice(ok))] + rng.uniform(-1, 1, 3) * jitter
                if len(vs) and vs.distance_to_surface(cand).min() < r + 1.0:
                    continue
            if lm.distance(cand)[0] <= 0:
                continue
            if any(np.linalg.norm(cand - c2) < r + r2 + 6 for c2, r2 in centres):
                continue
            c = cand
            break
        if c is None:
            continue
        nod.center_mm = (float(c[0]), float(c[1]), float(c[2]))
        nod.region = region_label(anat, c)
        centres.append((c, r))
        placed.append(nod)
    for i, nod in enumerate(placed):
        nod.finding_id = i
    return placed


def _radius_field(nod: Nodule, u: list[np.ndarray], base: float) -> np.ndarray | float:
    """Directional radius: lobes bulge the sphere while keeping the mean radius ``base``."""
    if not len(nod.lobes):
        return base
    k = 4.0
    acc = 0.0
    for v, w in zip(nod.lobes, nod.lobe_w, strict=True):
        dot = np.maximum(u[0] * v[0] + u[1] * v[1] + u[2] * v[2], 0)
        acc = acc + w * (dot**k - 1.0 / (2 * (k + 1)))
    return base * (1.0 + acc)


def render_nodule(anat: Anatomy, nod: Nodule, rng: np.random.Generator) -> float:
    """Draw ``nod`` into the anatomy (lung tissue only); returns its volume in mm³."""
    g = anat.grid
    h = g.soft_width
    c = np.asarray(nod.center_mm, dtype=np.float64)
    ext = nod.extent_mm + h
    bb = g.bbox(c - ext, c + ext)
    if bb is None:
        return 0.0
    f32 = np.float32
    X = (g.xs[bb[2]] - f32(c[0]))[None, None, :]
    Y = (g.ys[bb[1]] - f32(c[1]))[None, :, None]
    Z = (g.zs[bb[0]] - c[2]).astype(f32)[:, None, None]
    rho = np.sqrt(X * X + Y * Y + Z * Z) + f32(1e-6)
    u = [X / rho, Y / rho, Z / rho]
    R = _radius_field(nod, u, nod.diameter_mm / 2)
    occ = np.clip((R - rho) / f32(h) + f32(0.5), 0, 1)
    spikes = np.zeros_like(occ)
    for v, ln, w in zip(nod.spikes, nod.spike_len, nod.spike_w, strict=True):
        proj = X * f32(v[0]) + Y * f32(v[1]) + Z * f32(v[2])
        perp = np.sqrt(np.maximum(rho * rho - proj * proj, 0))
        tip = nod.diameter_mm / 2 + ln
        width = f32(w) * np.clip(1 - proj / f32(tip), 0, 1)
        o = np.clip((width - perp) / f32(h) + f32(0.5), 0, 1) * (proj > 0)
        np.maximum(spikes, o, out=spikes)
    lab = anat.labels[bb]
    allowed = label_lut(LUNG_LIKE)[lab]
    occ *= allowed
    spikes *= allowed
    sub = anat.hu[bb]
    tex = rng.standard_normal(sub.shape).astype(f32)
    if nod.type in ("ground_glass", "part_solid"):
        target = f32(nod.hu) + f32(25) * tex
        sub += occ * np.maximum(target - sub, 0)
        if nod.type == "part_solid":
            Rs = _radius_field(nod, u, nod.solid_diameter_mm / 2)
            occ_s = np.clip((Rs - rho) / f32(h) + f32(0.5), 0, 1) * allowed
            sub += occ_s * np.maximum(f32(nod.solid_hu) - sub, 0)
    else:
        target = f32(nod.hu) + f32(8) * tex
        sub += occ * np.maximum(target - sub, 0)
    if len(nod.spikes):
        sub += spikes * np.maximum(f32(nod.solid_hu) - sub, 0)
    total = np.maximum(occ, spikes)
    lab[total > 0.5] = Tissue.NODULE
    return float(total.sum() * g.voxel_volume)


# The lung map that places nodules is coarse and does not know the great vessels drawn over the
# hilum: a nodule placed there is drawn only in part (only into lung tissue) or not at all.
MIN_DRAWN_FRACTION = 0.25


def visible_nodules(nodules: list[Nodule]) -> list[Nodule]:
    """The drawn nodules whose drawn volume is at least ``MIN_DRAWN_FRACTION`` of their nominal
    sphere, renumbered: the truth lists only nodules the image shows (a juxtapleural nodule,
    clipped at the pleura, keeps about half of its sphere)."""
    kept = [n for n in nodules if n.volume_mm3 >= MIN_DRAWN_FRACTION * math.pi / 6 * n.diameter_mm**3]
    for i, nod in enumerate(kept):
        nod.finding_id = i
    return kept


def apply_emphysema(anat: Anatomy, rng: np.random.Generator, fraction: float, slab: int = 32) -> None:
    """Turn about ``fraction`` of the lung into low-attenuation (< -950 HU) regions.

    A smooth random field with an upper-zone gradient (centrilobular pattern) is
    thresholded at the quantile that gives the wanted fraction of lung voxels.
    """
    if fraction <= 0:
        return
    g = anat.grid
    p = anat.params
    fld = SmoothField.random(rng, g, 3.5)
    xs, ys, zs = g.xs, g.ys, g.zs
    grad = 0.9 * (zs - p.z_base) / p.lung_height

    def values(k0: int, k1: int, step: int = 1) -> np.ndarray:
        return fld.evaluate(xs, ys, zs[k0:k1:step]) + grad[k0:k1:step, None, None].astype(np.float32)

    lung_lut = label_lut([Tissue.LUNG])
    denom_lut = label_lut([Tissue.LUNG, Tissue.VESSEL, Tissue.EMPHYSEMA, Tissue.NODULE])
    sample = []
    n_lung = 0
    n_all = 0
    for k in range(0, g.shape[0], 4):
        m = lung_lut[anat.labels[k]]
        n_lung += int(m.sum())
        n_all += int(denom_lut[anat.labels[k]].sum())
        sample.append(values(k, k + 1)[0][m])
    vals = np.concatenate(sample) if sample else np.zeros(0)
    if not len(vals):
        return
    q = 1.0 - min(0.95, fraction * n_all / max(n_lung, 1))
    thr = np.float32(np.quantile(vals, q))
    for k0 in range(0, g.shape[0], slab):
        lab = anat.labels[k0 : k0 + slab]
        m = lung_lut[lab] & (values(k0, k0 + slab) > thr)
        sub = anat.hu[k0 : k0 + slab]
        sub[m] = rng.uniform(-995, -960, int(m.sum())).astype(np.float32)
        lab[m] = Tissue.EMPHYSEMA


def laa950(anat: Anatomy) -> float:
    """LAA-950: fraction of lung voxels (airways excluded) below -950 HU in the clean volume."""
    lut = label_lut(LUNG_LIKE)
    n = 0
    low = 0
    for k in range(anat.grid.shape[0]):
        m = lut[anat.labels[k]]
        n += int(m.sum())
        low += int((anat.hu[k][m] < -950).sum())
    return low / n if n else 0.0
