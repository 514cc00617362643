"""Rasterisation primitives: smooth random fields and anti-aliased tapering tubes.

Everything draws only inside the bounding box of the object, so cost follows the
object's size, not the volume's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synth.geometry import Grid


def interp_matrix(out_coords: np.ndarray, in_start: float, in_step: float, n_in: int) -> np.ndarray:
    """Linear-interpolation weights ``(len(out), n_in)`` from a regular 1D grid to ``out_coords``."""
    f = np.clip((np.asarray(out_coords, dtype=np.float64) - in_start) / in_step, 0, n_in - 1)
    i0 = np.minimum(np.floor(f).astype(int), n_in - 2) if n_in > 1 else np.zeros(len(f), int)
    w1 = f - i0
    m = np.zeros((len(f), n_in), dtype=np.float32)
    rows = np.arange(len(f))
    m[rows, i0] = 1 - w1
    if n_in > 1:
        m[rows, i0 + 1] += w1
    return m


@dataclass
class SmoothField:
    """A zero-mean, unit-variance random field with correlation length ``step`` (mm).

    Stored as a coarse lattice and evaluated anywhere by separable linear interpolation
    (three small matrix products), so a full-resolution texture never needs storing.
    """

    values: np.ndarray  # (cz, cy, cx)
    origin: tuple[float, float, float]  # x, y, z of lattice node 0
    step: float

    @classmethod
    def random(cls, rng: np.random.Generator, grid: Grid, step: float) -> SmoothField:
        """A fresh field covering ``grid`` (plus a margin) with lattice spacing ``step``."""
        ext = np.asarray(grid.spacing) * np.asarray(grid.shape[::-1])
        n = (np.ceil(ext / step).astype(int) + 3)[::-1]
        v = rng.standard_normal(tuple(n)).astype(np.float32)
        v = ndimage.gaussian_filter(v, 0.7)
        v = (v - v.mean()) / (v.std() + 1e-6)
        origin = tuple(float(o - step) for o in grid.origin)
        return cls(v, origin, step)  # type: ignore[arg-type]

    def evaluate(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Field values on the tensor grid ``zs × ys × xs`` -> ``(len(zs), len(ys), len(xs))``."""
        cz, cy, cx = self.values.shape
        wz = interp_matrix(zs, self.origin[2], self.step, cz)
        wy = interp_matrix(ys, self.origin[1], self.step, cy)
        wx = interp_matrix(xs, self.origin[0], self.step, cx)
        a = np.tensordot(wz, self.values, axes=(1, 0))  # (nz, cy, cx)
        a = a @ wx.T  # (nz, cy, nx)
        return np.matmul(wy[None], a)  # (nz, ny, nx)


@dataclass
class Segments:
    """Tapering tube segments: ``p0``/``p1`` ``(n, 3)`` mm, radii ``r0``/``r1`` ``(n,)`` mm."""

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @classmethod
    def empty(cls) -> Segments:
        """No segments."""
        z = np.zeros((0, 3))
        return cls(z, z.copy(), np.zeros(0), np.zeros(0))

    @classmethod
    def from_list(cls, items: Sequence[tuple[np.ndarray, np.ndarray, float, float]]) -> Segments:
        """Build from ``(p0, p1, r0, r1)`` tuples."""
        if not items:
            return cls.empty()
        p0, p1, r0, r1 = zip(*items, strict=True)
        return cls(np.array(p0, float), np.array(p1, float), np.array(r0, float), np.array(r1, float))

    def __len__(self) -> int:
        return len(self.r0)

    def concat(self, other: Segments) -> Segments:
        """Both sets of segments."""
        return Segments(
            np.concatenate([self.p0, other.p0]),
            np.concatenate([self.p1, other.p1]),
            np.concatenate([self.r0, other.r0]),
            np.concatenate([self.r1, other.r1]),
        )

    def distance_to_surface(self, point: np.ndarray) -> np.ndarray:
        """Distance (mm) from ``point`` to each segment's surface (negative inside)."""
        v = self.p1 - self.p0
        vv = np.maximum((v * v).sum(1), 1e-9)
        t = np.clip(((point - self.p0) * v).sum(1) / vv, 0, 1)
        c = self.p0 + t[:, None] * v
        d = np.linalg.norm(point - c, axis=1)
        return d - (self.r0 + (self.r1 - self.r0) * t)


def label_lut(labels: Sequence[int]) -> np.ndarray:
    """A 256-entry boolean lookup table true for ``labels``."""
    lut = np.zeros(256, dtype=bool)
    lut[list(labels)] = True
    return lut


def tube_occupancy(
    grid: Grid, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Anti-aliased occupancy (0..1) of one tapering capsule inside its bounding box."""
    h = grid.soft_width
    rmax = max(r0, r1) + h
    bb = grid.bbox(np.minimum(p0, p1) - rmax, np.maximum(p0, p1) + rmax)
    if bb is None:
        return None
    xs = grid.xs[bb[2]][None, None, :] - np.float32(p0[0])
    ys = grid.ys[bb[1]][None, :, None] - np.float32(p0[1])
    zs = (grid.zs[bb[0]].astype(np.float32) - np.float32(p0[2]))[:, None, None]
    v = (p1 - p0).astype(np.float32)
    vv = max(float(v @ v), 1e-9)
    t = (xs * v[0] + ys * v[1] + zs * v[2]) * np.float32(1.0 / vv)
    np.clip(t, 0, 1, out=t)
    dx = xs - t * v[0]
    dy = ys - t * v[1]
    dz = zs - t * v[2]
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    r = np.float32(r0) + np.float32(r1 - r0) * t
    occ = (r - d) * np.float32(1.0 / h) + np.float32(0.5)
    np.clip(occ, 0, 1, out=occ)
    return bb, occ


def draw_tubes(
    hu: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    segs: Segments,
    value: float,
    label: int,
    allowed: np.ndarray,
    relabel: np.ndarray,
    extra_radius: float = 0.0,
) -> None:
    """Blend tubes of HU ``value`` into ``hu`` where the current label is ``allowed``.

    Voxels more than half inside take ``label`` when their current label is in ``relabel``.
    ``extra_radius`` widens every tube (used for airway walls).
    """
    for n in range(len(segs)):
        res = tube_occupancy(
            grid, segs.p0[n], segs.p1[n], segs.r0[n] + extra_radius, segs.r1[n] + extra_radius
        )
        if res is None:
            continue
        bb, occ = res
        lab = labels[bb]
        occ *= allowed[lab]
        sub = hu[bb]
        sub += occ * (np.float32(value) - sub)
        lab[(occ > 0.5) & relabel[lab]] = label
