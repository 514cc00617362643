"""From a stitched probability map to measured nodule candidates and classifier crops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from export.spec import ModelSpec
from pipeline.preprocess import Preprocessed

# HU above which a nodule voxel counts as solid (Lung-RADS measures the solid component).
SOLID_HU = -300.0


@dataclass(frozen=True)
class Candidate:
    """One connected component of the detector's map, measured in millimetres."""

    center_ijk: tuple[float, float, float]
    score: float
    volume_mm3: float
    diameter_mm: float
    solid_diameter_mm: float

    def center_ras(self, pre: Preprocessed) -> np.ndarray:
        return pre.voxel_to_ras(np.asarray(self.center_ijk))[0]


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter of the sphere of the same volume."""
    return float((6.0 * max(volume_mm3, 0.0) / np.pi) ** (1.0 / 3.0))


def extract_candidates(
    probs: np.ndarray,
    pre: Preprocessed,
    spec: ModelSpec,
    *,
    threshold: float = 0.5,
    min_diameter_mm: float = 2.0,
    max_candidates: int = 64,
) -> list[Candidate]:
    """Connected components above ``threshold``, measured, scored and de-duplicated (NMS).

    The score is the component's peak probability; the centre is the probability-weighted
    centroid; volume counts the component's voxels; the solid component counts the voxels of
    it denser than :data:`SOLID_HU` in the preprocessed image.
    """
    mask = probs >= threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    voxel_mm3 = float(np.prod(pre.spacing))
    counts = ndimage.sum_labels(mask, labels, index)
    peaks = ndimage.maximum(probs, labels, index)
    centers = ndimage.center_of_mass(probs, labels, index)
    low, high = spec.hu_window
    solid_level = (SOLID_HU - low) / (high - low)
    solid_counts = ndimage.sum_labels(pre.array >= solid_level, labels, index)
    found = [
        Candidate(
            center_ijk=tuple(float(c) for c in center),
            score=float(peak),
            volume_mm3=float(count) * voxel_mm3,
            diameter_mm=equivalent_diameter(float(count) * voxel_mm3),
            solid_diameter_mm=equivalent_diameter(float(solid) * voxel_mm3),
        )
        for center, peak, count, solid in zip(centers, peaks, counts, solid_counts, strict=True)
    ]
    found = [c for c in found if c.diameter_mm >= min_diameter_mm]
    return non_maximum_suppression(found, pre.spacing)[:max_candidates]


def non_maximum_suppression(candidates: Sequence[Candidate], spacing: Sequence[float]) -> list[Candidate]:
    """Keep the best-scoring candidate among those whose centres lie within each other's radius."""
    kept: list[Candidate] = []
    scale = np.asarray(spacing, dtype=np.float64)
    for cand in sorted(candidates, key=lambda c: c.score, reverse=True):
        here = np.asarray(cand.center_ijk) * scale
        if all(
            np.linalg.norm(here - np.asarray(k.center_ijk) * scale) > max(k.diameter_mm, cand.diameter_mm) / 2
            for k in kept
        ):
            kept.append(cand)
    return kept


def crop_around(
    array: np.ndarray, center_ijk: Sequence[float], size: Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """A ``size`` crop centred on ``center_ijk``, padded with ``fill`` where it leaves the volume."""
    out = np.full(tuple(size), fill, dtype=np.float32)
    start = [round(float(c)) - s // 2 for c, s in zip(center_ijk, size, strict=True)]
    src, dst = [], []
    for st, s, n in zip(start, size, array.shape, strict=True):
        lo, hi = max(st, 0), min(st + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = array[tuple(src)]
    return out


def ras_to_lps(ras: np.ndarray) -> np.ndarray:
    """DICOM patient coordinates (LPS) of RAS millimetres."""
    lps = np.array(ras, dtype=np.float64, copy=True)
    lps[..., :2] *= -1.0
    return lps
