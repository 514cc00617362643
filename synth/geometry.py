"""The patient grid: voxel index <-> patient millimetres (DICOM LPS).

Volumes are ``float32``/``uint8`` arrays indexed ``[k, j, i]`` = ``[z, y, x]`` where
``x`` grows towards the patient's left, ``y`` towards posterior and ``z`` towards the head
(DICOM patient coordinates, LPS). ``k`` grows with ``z`` (inferior -> superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular axis-aligned grid in patient LPS millimetres.

    ``shape`` is ``(nz, ny, nx)``; ``origin`` and ``spacing`` are ``(x, y, z)`` of voxel
    ``[0, 0, 0]`` and the step along each axis.
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]

    @property
    def xs(self) -> np.ndarray:
        """x of every column (mm)."""
        return (self.origin[0] + self.spacing[0] * np.arange(self.shape[2])).astype(np.float32)

    @property
    def ys(self) -> np.ndarray:
        """y of every row (mm)."""
        return (self.origin[1] + self.spacing[1] * np.arange(self.shape[1])).astype(np.float32)

    @property
    def zs(self) -> np.ndarray:
        """z of every slice (mm)."""
        return (self.origin[2] + self.spacing[2] * np.arange(self.shape[0])).astype(np.float64)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    @property
    def soft_width(self) -> float:
        """Width (mm) of the partial-volume ramp used to anti-alias drawn edges."""
        return float(np.cbrt(self.voxel_volume))

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Fractional ``(k, j, i)`` indices of ``(..., 3)`` points given as ``(x, y, z)`` mm."""
        p = np.asarray(points_mm, dtype=np.float64)
        o = np.asarray(self.origin)
        s = np.asarray(self.spacing)
        xyz = (p - o) / s
        return xyz[..., ::-1]

    def to_mm(self, index_kji: np.ndarray) -> np.ndarray:
        """``(x, y, z)`` mm of ``(..., 3)`` fractional ``(k, j, i)`` indices."""
        idx = np.asarray(index_kji, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + idx * np.asarray(self.spacing)

    def bbox(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices ``(z, y, x)`` of the voxels whose centres lie in ``[lo, hi]``; None if empty."""
        o = np.asarray(self.origin)
        s = np.asarray(self.spacing)
        lo = np.ceil((np.asarray(lo_mm) - o) / s).astype(int)
        hi = np.floor((np.asarray(hi_mm) - o) / s).astype(int) + 1
        n = np.asarray(self.shape[::-1])
        lo = np.clip(lo, 0, n)
        hi = np.clip(hi, 0, n)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def coarse(self, step_mm: float) -> Grid:
        """A grid covering the same box with roughly ``step_mm`` spacing."""
        ext = np.asarray(self.spacing) * (np.asarray(self.shape[::-1]) - 1)
        n = np.maximum(2, np.round(ext / step_mm).astype(int) + 1)
        sp = ext / (n - 1)
        return Grid((int(n[2]), int(n[1]), int(n[0])), self.origin, tuple(float(v) for v in sp))
