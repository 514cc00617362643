"""Chest anatomy in Hounsfield units on the patient grid.

:func:`sample_anatomy` draws a patient (:class:`AnatomyParams`); :func:`render_anatomy`
turns it into a clean (noise-free, unblurred) HU volume, a tissue label volume and the
airway/vessel trees. The volume is filled slab by slab from closed-form shapes
(superellipse body layers, ellipsoid heart, diaphragm domes, rib bands), then the tubes
(aorta, trachea, bronchial and pulmonary vessel trees) are drawn inside their bounding
boxes only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from synth.geometry import Grid
from synth.raster import Segments, SmoothField, draw_tubes, label_lut


class Tissue(IntEnum):
    """Tissue labels of the label volume."""

    AIR = 0
    TABLE = 1
    SKIN = 2
    FAT = 3
    MUSCLE = 4
    SOFT = 5
    BONE = 6
    CARTILAGE = 7
    HEART = 8
    GREAT_VESSEL = 9
    ABDOMEN = 10
    LUNG = 11
    EMPHYSEMA = 12
    VESSEL = 13
    AIRWAY = 14
    AIRWAY_WALL = 15
    NODULE = 16


#: Expected mean HU of each tissue in the clean volume (documented in README; tested).
TISSUE_HU_RANGE: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1010, -990),
    Tissue.SKIN: (10, 60),
    Tissue.FAT: (-130, -70),
    Tissue.MUSCLE: (25, 65),
    Tissue.BONE: (400, 1000),
    Tissue.HEART: (25, 60),
    Tissue.GREAT_VESSEL: (0, 60),  # partial-volume edges against fat included
    Tissue.LUNG: (-900, -800),
    Tissue.EMPHYSEMA: (-1000, -951),
    Tissue.VESSEL: (-250, 60),
    Tissue.AIRWAY: (-1000, -700),
}

LUNG_LIKE = (Tissue.LUNG, Tissue.EMPHYSEMA, Tissue.VESSEL, Tissue.NODULE)


@dataclass(frozen=True)
class AnatomyParams:
    """One synthetic patient. Lengths in mm, positions in patient LPS mm."""

    sex: str
    body_a: float  # half width (left-right)
    body_b: float  # half depth (antero-posterior)
    center_x: float
    center_y: float
    skin: float
    fat: float
    muscle: float
    rib_thickness: float
    shape_exp: float
    z_base: float  # lowest lung point (costophrenic recess)
    lung_height: float
    dome_right: float  # dome heights above z_base
    dome_left: float
    apex_drop: float
    med_half_width: float
    heart_axes: tuple[float, float, float]
    lung_hu: float
    gravity_hu: float
    rib_pitch: float
    rib_drop: float
    rib_width: float
    rib_phase: float
    vertebra_radius: float
    table_gap: float

    @property
    def cavity_scale(self) -> float:
        """Cavity half-width / body half-width."""
        return (self.body_a - self.skin - self.fat - self.muscle - self.rib_thickness) / self.body_a

    @property
    def cavity_a(self) -> float:
        return self.body_a * self.cavity_scale

    @property
    def cavity_b(self) -> float:
        return self.body_b * self.cavity_scale

    @property
    def z_apex(self) -> float:
        return self.z_base + self.lung_height

    @property
    def z_carina(self) -> float:
        return self.z_base + 0.64 * self.lung_height

    @property
    def lung_center_offset(self) -> float:
        """|x| of each lung's centre relative to the body centre."""
        return 0.5 * (self.cavity_a + self.med_half_width)

    @property
    def vertebra_y(self) -> float:
        """y of the vertebral body centre relative to the body centre."""
        return self.cavity_b - 0.55 * self.vertebra_radius

    @property
    def heart_center(self) -> tuple[float, float, float]:
        """Heart centre (x, y, z) relative to (centre_x, centre_y, 0)."""
        _hx, _hy, hz = self.heart_axes
        return (0.22 * self.cavity_a, -0.3 * self.cavity_b, self.z_base + self.dome_left + 0.55 * hz)


def sample_anatomy(
    rng: np.random.Generator, max_lung_height: float, size_scale: float = 1.0
) -> AnatomyParams:
    """Draw one patient; ``max_lung_height`` bounds the lungs so the scan fits the profile."""
    sex = str(rng.choice(["M", "F"]))
    size = float(np.clip(rng.normal(1.0, 0.07), 0.86, 1.16)) * (1.0 if sex == "M" else 0.93) * size_scale
    a = 160.0 * size * rng.uniform(0.95, 1.05)
    b = 112.0 * size * rng.uniform(0.93, 1.07)
    fat = rng.uniform(6, 26) * (1.15 if sex == "F" else 1.0)
    height = float(np.clip(rng.uniform(205, 265) * size, 180, max_lung_height))
    dome_r = rng.uniform(45, 70) * height / 240
    return AnatomyParams(
        sex=sex,
        body_a=a,
        body_b=b,
        center_x=rng.uniform(-10, 10),
        center_y=rng.uniform(-25, 0),
        skin=2.0,
        fat=fat,
        muscle=rng.uniform(9, 16),
        rib_thickness=rng.uniform(8, 10),
        shape_exp=rng.uniform(2.2, 2.6),
        z_base=rng.uniform(-320, -120),
        lung_height=height,
        dome_right=dome_r,
        dome_left=dome_r - rng.uniform(8, 18),
        apex_drop=rng.uniform(80, 110),
        med_half_width=rng.uniform(15, 22) * size,
        heart_axes=(rng.uniform(52, 62) * size, rng.uniform(40, 50) * size, rng.uniform(46, 56) * size),
        lung_hu=rng.uniform(-875, -845),
        gravity_hu=rng.uniform(20, 45),
        rib_pitch=rng.uniform(24, 30),
        rib_drop=rng.uniform(50, 80),
        rib_width=rng.uniform(9, 12),
        rib_phase=rng.uniform(0, 30),
        vertebra_radius=rng.uniform(16, 20) * size,
        table_gap=rng.uniform(0.5, 3.0),
    )


@dataclass
class LungMap:
    """Coarse lung mask and distance-to-pleura (mm) for placing branches and nodules."""

    grid: Grid
    mask: np.ndarray  # bool (cz, cy, cx)
    dist: np.ndarray  # float32 mm, 0 outside

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Distance inside the lungs (mm, nearest coarse voxel); 0 outside or off-grid."""
        idx = np.rint(self.grid.to_index(np.atleast_2d(points))).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(self.grid.shape)), axis=1)
        out = np.zeros(len(idx), dtype=np.float32)
        k, j, i = idx[ok].T
        out[ok] = self.dist[k, j, i]
        return out


@dataclass
class Anatomy:
    """A rendered patient: clean HU, labels, trees and the coarse lung map."""

    params: AnatomyParams
    grid: Grid
    hu: np.ndarray  # float32 (nz, ny, nx)
    labels: np.ndarray  # uint8
    vessels: Segments
    airways: Segments
    lung: LungMap


def _render_slab(
    p: AnatomyParams,
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    soft_tex: np.ndarray | None = None,
    lung_tex: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form anatomy on the tensor grid ``zs × ys × xs`` -> (HU float32, labels uint8)."""
    f32 = np.float32
    X = (xs - f32(p.center_x)).astype(f32)[None, None, :]
    Y = (ys - f32(p.center_y)).astype(f32)[None, :, None]
    Z = np.asarray(zs, dtype=f32)[:, None, None]
    shape = (len(zs), len(ys), len(xs))
    n = p.shape_exp
    t = (Z - f32(p.z_base)) / f32(p.lung_height)  # 0 at lung base, 1 at apex
    # body breathes a little along z: narrower towards the neck and the abdomen
    scale = f32(1.0) + f32(0.035) * np.cos(np.clip(t - 0.45, -1.5, 1.5) * f32(2.2))
    ka = (1.0 / (p.body_a * scale)) ** n
    kb = (1.0 / (p.body_b * scale)) ** n
    L = (np.abs(X) ** f32(n)) * ka + (np.abs(Y) ** f32(n)) * kb  # level: 1 at the skin surface
    a = p.body_a
    th_skin = f32(((a - p.skin) / a) ** n)
    th_fat = f32(((a - p.skin - p.fat) / a) ** n)
    cs = p.cavity_scale
    th_cav = f32(cs**n)
    th_rib = f32(((a * cs + p.rib_thickness) / a) ** n)

    lab = np.zeros(shape, dtype=np.uint8)
    hu = np.full(shape, -1000.0, dtype=f32)
    st = soft_tex if soft_tex is not None else np.zeros(shape, f32)

    body = L < 1
    lab[body] = Tissue.SKIN
    lab[th_skin > L] = Tissue.FAT
    lab[th_fat > L] = Tissue.MUSCLE
    cavity = th_cav > L
    shell = (th_cav <= L) & (th_rib > L)

    # --- ribs: bands in the shell that descend anteriorly ---------------------------
    yn = np.clip(Y / f32(p.body_b * cs), -1, 1)
    phase = np.mod(Z + f32(p.rib_drop) * (1 - yn) * f32(0.5) - f32(p.rib_phase), f32(p.rib_pitch))
    rib_z_ok = (p.z_base - 40 < Z) & (p.z_apex + 5 > Z)
    rib = shell & (phase < f32(p.rib_width)) & rib_z_ok & ~((np.abs(X) < 12) & (Y < 0))
    cart = rib & (yn < -0.55) & (np.abs(X) < 0.45 * p.cavity_a)
    rib_bone = rib & ~cart
    lab[cart] = Tissue.CARTILAGE
    lab[rib_bone] = Tissue.BONE

    # --- spine, canal, paraspinal muscles, sternum -----------------------------------
    rv = p.vertebra_radius
    yv = p.vertebra_y
    rr_v = np.sqrt(X * X + (Y - f32(yv)) ** 2)
    vert = rr_v < rv
    canal_y = yv + rv + 8
    rr_c = np.sqrt(X * X + (Y - f32(canal_y)) ** 2)
    para = (((np.abs(X) - 32) / 24) ** 2 + ((Y - f32(canal_y + 10)) / 22) ** 2 < 1) & body & ~cavity
    lab[np.broadcast_to(para, shape) & (lab != Tissue.SKIN)] = Tissue.MUSCLE
    post = ((rr_c < 13) | ((np.abs(X) < 4) & (canal_y < Y) & (canal_y + 30 > Y))) & body
    canal = rr_c < 7
    stern = ((X / 14) ** 2 + ((Y + f32(p.cavity_b + 0.5 * p.rib_thickness)) / 6) ** 2 < 1) & (
        (p.z_base + 0.3 * p.lung_height < Z) & (p.z_apex - 5 > Z)
    )

    # --- mediastinum, heart, lungs, domes -------------------------------------------
    hx, hy, hz = p.heart_center
    ha, hb, hc = p.heart_axes
    e_heart = ((X - f32(hx)) / f32(ha)) ** 2 + ((Y - f32(hy)) / f32(hb)) ** 2 + ((Z - f32(hz)) / f32(hc)) ** 2
    heart = e_heart < 1
    peri = (e_heart < f32(1.14)) & ~heart
    med = (np.abs(X) < f32(p.med_half_width)) | heart | peri | (rr_v < rv + 3)
    xl = p.lung_center_offset
    half_w = 0.5 * (p.cavity_a - p.med_half_width)
    u = (np.abs(X) - f32(xl)) / f32(half_w)
    v = (Y + f32(0.1 * p.cavity_b)) / f32(p.cavity_b)
    dome_h = np.where(X < 0, f32(p.dome_right), f32(p.dome_left))
    z_dome = f32(p.z_base) + dome_h * np.clip(1 - 0.45 * u * u - 0.75 * v * v, 0, 1)
    v2 = (Y - f32(0.15 * p.cavity_b)) / f32(p.cavity_b)
    z_top = f32(p.z_apex) - f32(p.apex_drop) * (0.8 * u * u + v2 * v2)
    pleura = f32((p.cavity_scale * 0.985) ** n)
    lung = (pleura > L) & ~med & (z_dome < Z) & (z_top > Z)
    abdomen = cavity & ~med & (z_dome >= Z)
    above = cavity & ~med & (z_top <= Z)

    lab[cavity] = Tissue.FAT  # mediastinal fat by default
    lab[above] = Tissue.SOFT
    lab[abdomen] = Tissue.ABDOMEN
    lab[heart] = Tissue.HEART
    lab[lung] = Tissue.LUNG
    lab[np.broadcast_to(vert, shape) & body] = Tissue.BONE
    lab[np.broadcast_to(post, shape)] = Tissue.BONE
    lab[np.broadcast_to(canal, shape) & body] = Tissue.SOFT
    lab[stern & body] = Tissue.BONE

    # --- table (absolute coordinates) ------------------------------------------------
    y_top = p.center_y + p.body_b * float(scale.max()) + p.table_gap
    ya = ys[None, :, None]
    table = (ya >= y_top) & (ya < y_top + 14) & (np.abs(xs)[None, None, :] < 230) & (lab == Tissue.AIR)
    lab[table] = Tissue.TABLE

    # --- HU ---------------------------------------------------------------------------
    hu[lab == Tissue.SKIN] = 35.0
    m = lab == Tissue.FAT
    hu[m] = -100.0 + 9.0 * st[m]
    m = lab == Tissue.MUSCLE
    hu[m] = 45.0 + 6.0 * st[m]
    m = lab == Tissue.SOFT
    hu[m] = 25.0 + 8.0 * st[m]
    hu[lab == Tissue.CARTILAGE] = 130.0
    hu[lab == Tissue.HEART] = 42.0 + 3.0 * st[lab == Tissue.HEART]
    m = lab == Tissue.ABDOMEN
    hu[m] = np.where(np.broadcast_to(X < 0, shape)[m], 58.0, 42.0) + 5.0 * st[m]
    m = lab == Tissue.TABLE
    yy = np.broadcast_to(ya, shape)[m]
    hu[m] = np.where((yy < y_top + 2) | (yy > y_top + 12), 250.0, -750.0)
    # bone: cortex bright, marrow dimmer
    m = lab == Tissue.BONE
    edge = ndimage.binary_erosion(m, structure=np.ones((1, 3, 3), bool), border_value=0)
    hu[m] = 480.0 + 20.0 * st[m]
    hu[m & ~edge] = 900.0
    # lungs: gravity-dependent density gradient plus fine texture
    m = lab == Tissue.LUNG
    lt = lung_tex if lung_tex is not None else np.zeros(shape, f32)
    grav = np.broadcast_to(np.clip(Y / f32(p.cavity_b), -1, 1), shape)[m]
    hu[m] = f32(p.lung_hu) + f32(p.gravity_hu) * grav + 14.0 * lt[m]
    return hu, lab


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _rotate_towards(d: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotate unit vector ``d`` by ``angle`` (rad) towards the unit vector ``axis`` ⟂ ``d``."""
    return _unit(np.cos(angle) * d + np.sin(angle) * axis)


def _perp(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    a = rng.standard_normal(3)
    a -= (a @ d) * d
    return _unit(a)


def grow_tree(
    rng: np.random.Generator,
    lung: LungMap,
    roots: list[tuple[np.ndarray, np.ndarray, float]],
    min_radius: float,
    max_segments: int,
    length_ratio: float = 7.0,
) -> Segments:
    """Grow a bifurcating, tapering tree from ``(start, direction, radius)`` roots.

    Breadth-first so ``max_segments`` truncates evenly. Children follow Murray's law
    (r³ = r₁³ + r₂³) with 20-45° branching angles; a branch turns away from the pleura
    when its planned end is too close to it, and stops when no turn keeps it inside.
    """
    out: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    queue = deque((np.asarray(s, float), _unit(np.asarray(d, float)), r, 0) for s, d, r in roots)
    while queue and len(out) < max_segments:
        p, d, r, gen = queue.popleft()
        length = max(3.0, r * length_ratio * rng.uniform(0.7, 1.3))
        end = None
        axis = _perp(rng, d)
        for ang in (0.0, 0.3, -0.3, 0.6, -0.6, 0.9, -0.9):
            cand = _rotate_towards(d, axis, ang) if ang else d
            e = p + cand * length
            if gen < 2 or lung.distance(e)[0] > r + 1.5:
                end, d = e, cand
                break
        if end is None:
            continue
        r_end = r * 0.93
        out.append((p, end, r, r_end))
        f = rng.uniform(0.35, 0.65)
        r1, r2 = r_end * f ** (1 / 3), r_end * (1 - f) ** (1 / 3)
        if max(r1, r2) < min_radius:
            continue
        axis = _perp(rng, d)
        a1, a2 = rng.uniform(0.35, 0.75), rng.uniform(0.35, 0.75)
        if r1 < r2:
            a1, a2 = a2, a1
        for rc, ac in ((r1, a1 * (r2 / (r1 + r2)) * 2), (r2, -a2 * (r1 / (r1 + r2)) * 2)):
            if rc >= min_radius:
                queue.append((end, _rotate_towards(d, axis, ac), rc, gen + 1))
    return Segments.from_list(out)


def build_lung_map(p: AnatomyParams, grid: Grid, step: float = 4.0) -> LungMap:
    """The lung mask on a ``step``-mm grid and its distance-to-boundary transform."""
    cg = grid.coarse(step)
    _, lab = _render_slab(p, cg.xs, cg.ys, cg.zs)
    mask = lab == Tissue.LUNG
    dist = ndimage.distance_transform_edt(mask, sampling=cg.spacing[::-1]).astype(np.float32)
    return LungMap(cg, mask, dist)


def render_anatomy(
    p: AnatomyParams,
    grid: Grid,
    rng: np.random.Generator,
    *,
    min_vessel_radius: float = 0.6,
    max_tree_segments: int = 1200,
    min_airway_radius: float = 1.0,
    slab: int = 24,
) -> Anatomy:
    """Render the clean HU volume, labels and trees of patient ``p`` on ``grid``."""
    nz, _ny, _nx = grid.shape
    hu = np.empty(grid.shape, dtype=np.float32)
    labels = np.empty(grid.shape, dtype=np.uint8)
    soft_f = SmoothField.random(rng, grid, 14.0)
    lung_f = SmoothField.random(rng, grid, 4.5)
    xs, ys, zs = grid.xs, grid.ys, grid.zs
    for k0 in range(0, nz, slab):
        zz = zs[k0 : k0 + slab]
        h, lab = _render_slab(p, xs, ys, zz, soft_f.evaluate(xs, ys, zz), lung_f.evaluate(xs, ys, zz))
        hu[k0 : k0 + slab] = h
        labels[k0 : k0 + slab] = lab
    lung = build_lung_map(p, grid)

    cx, cy = p.center_x, p.center_y
    C = np.array([cx, cy, 0.0])
    hx, hy, hz = p.heart_center
    ha, hb, hc = p.heart_axes
    rv, yv = p.vertebra_radius, p.vertebra_y
    z_lo, z_hi = float(zs[0]) - 30, float(zs[-1]) + 30
    zc = p.z_carina
    yt = yv - rv - 20  # trachea y (relative)

    def P(x: float, y: float, z: float) -> np.ndarray:
        return C + np.array([x, y, z])

    # great vessels and oesophagus
    soft_ok = label_lut([Tissue.FAT, Tissue.SOFT, Tissue.LUNG, Tissue.ABDOMEN, Tissue.MUSCLE])
    relabel_gv = label_lut([Tissue.FAT, Tissue.SOFT, Tissue.LUNG, Tissue.ABDOMEN, Tissue.MUSCLE])
    ra = 13.0 * (p.body_a / 160)
    x_desc = rv + ra + 1
    aorta_pts = [
        P(hx - 0.45 * ha, hy + 0.1 * hb, hz + 0.45 * hc),
        P(-14, hy - 0.2 * hb, zc + 10),
        P(-6, yt - 12, zc + 32),
        P(x_desc * 0.7, yt + 10, zc + 34),
        P(x_desc, yv - 4, zc + 12),
        P(x_desc, yv - 4, z_lo),
    ]
    aorta = Segments.from_list(
        [(aorta_pts[i], aorta_pts[i + 1], ra * 1.1 if i < 2 else ra, ra) for i in range(len(aorta_pts) - 1)]
    )
    oes = Segments.from_list([(P(5, yv - rv - 6, z_hi), P(8, yv - rv - 6, z_lo), 6.5, 6.5)])
    xh = p.med_half_width + 8
    hil_r = P(-xh, yt + 2, zc - 22)
    hil_l = P(xh, yt + 4, zc - 30)
    pa_split = P(6, hy - 0.1 * hb, zc - 8)
    pa = Segments.from_list(
        [
            (P(hx - 0.1 * ha, hy - 0.55 * hb, hz + 0.5 * hc), pa_split, 12.0, 11.0),
            (pa_split, hil_r + np.array([0, -8, 4]), 10.0, 8.0),
            (pa_split, hil_l + np.array([0, -8, 6]), 10.0, 8.0),
        ]
    )
    draw_tubes(hu, labels, grid, oes, 35.0, Tissue.SOFT, soft_ok, relabel_gv)
    draw_tubes(hu, labels, grid, aorta, 42.0, Tissue.GREAT_VESSEL, soft_ok, relabel_gv)
    draw_tubes(hu, labels, grid, pa, 42.0, Tissue.GREAT_VESSEL, soft_ok, relabel_gv)

    # pulmonary arteries and veins: trees from the hila
    vessels = Segments.empty()
    la = P(hx - 0.1 * ha, hy + 0.75 * hb, hz + 0.2 * hc)
    for side, hil in ((-1, hil_r), (1, hil_l)):
        lat = np.array([side, 0.0, 0.0])
        a_root = hil + np.array([0, -8, 5])
        roots = [
            (a_root, lat * 0.5 + np.array([0, -0.1, 0.85]), 6.0),
            (a_root, lat * 0.85 + np.array([0, -0.4, 0.1]), 5.0),
            (a_root, lat * 0.45 + np.array([0, 0.35, -0.8]), 6.5),
        ]
        vessels = vessels.concat(grow_tree(rng, lung, roots, min_vessel_radius, max_tree_segments))
        v_root = hil + np.array([0, 10, -18])
        trunk = Segments.from_list([(la, v_root, 7.0, 6.0)])
        vroots = [
            (v_root, lat * 0.6 + np.array([0, 0.2, 0.75]), 5.5),
            (v_root, lat * 0.6 + np.array([0, 0.3, -0.7]), 6.0),
        ]
        vessels = vessels.concat(trunk).concat(
            grow_tree(rng, lung, vroots, min_vessel_radius, max_tree_segments)
        )
    vessel_ok = label_lut([Tissue.LUNG, Tissue.FAT, Tissue.SOFT, Tissue.VESSEL])
    draw_tubes(hu, labels, grid, vessels, 40.0, Tissue.VESSEL, vessel_ok, label_lut([Tissue.LUNG]))

    # airways: trachea, main bronchi, bronchial trees (wall first, then air lumen)
    trachea = Segments.from_list(
        [
            (P(0, yt, z_hi), P(0, yt, zc), 8.5, 8.0),
            (P(0, yt, zc), hil_r, 7.0, 5.5),
            (P(0, yt, zc), hil_l, 6.5, 5.0),
        ]
    )
    airways = trachea
    for side, hil in ((-1, hil_r), (1, hil_l)):
        lat = np.array([side, 0.0, 0.0])
        roots = [
            (hil, lat * 0.5 + np.array([0, 0.1, 0.85]), 4.5),
            (hil, lat * 0.9 + np.array([0, -0.3, 0.0]), 4.0),
            (hil, lat * 0.4 + np.array([0, 0.45, -0.8]), 5.0),
        ]
        airways = airways.concat(
            grow_tree(rng, lung, roots, min_airway_radius, max_tree_segments // 3, length_ratio=6.0)
        )
    air_ok = label_lut([Tissue.LUNG, Tissue.FAT, Tissue.SOFT, Tissue.VESSEL, Tissue.AIRWAY_WALL])
    wall = Segments(airways.p0, airways.p1, airways.r0 * 1.25 + 0.6, airways.r1 * 1.25 + 0.6)
    draw_tubes(hu, labels, grid, wall, 20.0, Tissue.AIRWAY_WALL, air_ok, label_lut([Tissue.LUNG]))
    draw_tubes(
        hu,
        labels,
        grid,
        airways,
        -1000.0,
        Tissue.AIRWAY,
        air_ok | label_lut([Tissue.AIRWAY]),
        air_ok,
    )
    return Anatomy(p, grid, hu, labels, vessels, airways, lung)
