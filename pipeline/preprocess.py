"""Preprocessing per a model's spec: HU window, resampling to the spec's spacing, lung crop.

Input is a :class:`~pipeline.volume.Volume` (float32 HU, closest-RAS axes, affine voxel -> RAS
mm); output keeps the same convention at the model's spacing, so a position found in the
model's grid maps back to patient millimetres through ``affine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from export.spec import ModelSpec
from pipeline.volume import Volume

if TYPE_CHECKING:
    from monai.transforms import Compose

# Axis labels of the orientation codes, spelled out (MONAI warns that its default changes).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
# Lung parenchyma and airways are below this; soft tissue, bone and vessels are above.
LUNG_HU_THRESHOLD = -400.0
# Margin kept around the lungs so juxtapleural nodules and the patch context stay inside.
LUNG_MARGIN_MM = 12.0
# How far outside the lung mask a candidate may lie (juxtapleural nodules bulge into the wall).
LUNG_GATE_MM = 6.0
# Lung-mask holes are filled with 4-connectivity within each axial slice (the third axis is
# superior), none across slices.
# In-plane connectivity only: holes are filled slice by slice, as lung segmentations do.
AXIAL_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
AXIAL_NEIGHBOURS[:, :, 1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Preprocessed:
    """A model-ready volume: ``array[i, j, k]`` scaled to 0..1, ``affine`` voxel -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    def voxel_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        """RAS millimetres of voxel indices (N x 3)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def ras_to_voxel(self, ras: np.ndarray) -> np.ndarray:
        """Voxel indices (float) of RAS millimetres (N x 3)."""
        ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        return (ras - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T


def model_transform(spec: ModelSpec) -> Compose:
    """The MONAI array transforms of a spec, applied to a channel-first MetaTensor."""
    # MONAI and torch load on first use, not on import: the job's driver imports this module
    # through its callers but never preprocesses, and they would double its memory.
    from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing

    low, high = spec.hu_window
    return Compose(
        [
            Orientation(axcodes=spec.orientation, labels=RAS_LABELS),
            ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
            Spacing(pixdim=spec.target_spacing_mm, mode="bilinear", padding_mode="border"),
        ]
    )


def preprocess(volume: Volume, spec: ModelSpec) -> Preprocessed:
    """Window, reorient and resample ``volume`` as ``spec`` says (MONAI transforms)."""
    import torch
    from monai.data import MetaTensor

    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=volume.affine)
    out = model_transform(spec)(image)
    array = out[0].numpy().astype(np.float32, copy=False)
    affine = np.asarray(out.affine, dtype=np.float64)
    return Preprocessed(array, affine, tuple(float(s) for s in spec.target_spacing_mm))


def same_grid(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether both specs preprocess a volume identically (spacing, orientation, HU window)."""
    return (a.target_spacing_mm, a.orientation, a.hu_window) == (
        b.target_spacing_mm,
        b.orientation,
        b.hu_window,
    )


def crop_at(volume: Volume, center_ras: Sequence[float], spec: ModelSpec) -> np.ndarray:
    """A ``spec.patch_size`` crop of ``volume`` centred on ``center_ras``, as :func:`preprocess`
    with ``spec`` would give it: the spec's orientation and spacing, its HU window scaled to 0..1,
    bilinear, border values outside the volume.

    Sampled from the HU volume around the centre only, so a model on a finer grid than the
    detector's (a candidate classifier) gets its own input without a second whole-volume
    resampling. Voxel ``size // 2`` of each axis lies on the centre, as in
    :func:`pipeline.postprocess.crop_around`.
    """
    size = np.asarray(spec.patch_size)
    steps = [(np.arange(n) - n // 2) * s for n, s in zip(size, spec.target_spacing_mm, strict=True)]
    offsets = np.stack([g.ravel() for g in np.meshgrid(*steps, indexing="ij")])
    ras = (
        np.asarray(center_ras, dtype=np.float64)[:, None]
        + _directions(volume.affine, spec.orientation) @ offsets
    )
    ijk = np.linalg.solve(volume.affine[:3, :3], ras - volume.affine[:3, 3:4])
    # Clamping the sample positions into the volume is the border padding of MONAI's Spacing.
    shape = np.asarray(volume.array.shape)
    ijk = np.clip(ijk, 0, (shape - 1)[:, None])
    lo = np.floor(ijk.min(axis=1)).astype(int)
    hi = np.minimum(np.floor(ijk.max(axis=1)).astype(int) + 2, shape)
    low, high = spec.hu_window
    # Windowed and clipped before interpolation, in preprocess's order (window, then Spacing).
    region = np.clip(
        (volume.array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] - low) / (high - low), 0, 1
    )
    values = ndimage.map_coordinates(region.astype(np.float32), ijk - lo[:, None], order=1, mode="nearest")
    return values.reshape(tuple(size)).astype(np.float32, copy=False)


def _directions(affine: np.ndarray, axcodes: str) -> np.ndarray:
    """Unit vectors (columns, RAS) of the axes ``axcodes`` reorients an ``affine``'s volume to."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    # Row a of the transform: the output axis that input axis a becomes, and whether it flips.
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes, labels=RAS_LABELS))
    unit = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    out = np.zeros((3, 3))
    for axis, (target, flip) in enumerate(transform):
        out[:, int(target)] = unit[:, axis] * flip
    return out


def lung_mask(pre: Preprocessed, spec: ModelSpec, step: int = 2) -> tuple[np.ndarray, int]:
    """A coarse lung mask (every ``step``-th voxel) and its step.

    Air connected to the volume's border is outside the body; the largest remaining
    low-density components are the lungs (and airways), with the vessels and nodules they
    enclose in each axial slice. Empty when none is found.
    """
    low, high = spec.hu_window
    threshold = (LUNG_HU_THRESHOLD - low) / (high - low)
    small = pre.array[::step, ::step, ::step] < threshold
    labels, n = ndimage.label(small)
    if n == 0:
        return np.zeros_like(small), step
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    border = set(np.unique(np.concatenate([f.ravel() for f in faces])).tolist())
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    inside = [(size, lab) for lab, size in enumerate(sizes, start=1) if lab not in border]
    if not inside:
        return np.zeros_like(small), step
    biggest = max(inside)[0]
    keep = [lab for size, lab in inside if size >= 0.2 * biggest]
    # Vessels and nodules are dense, so the air threshold leaves them out of the lungs; a mass
    # of more than twice the gate's margin would keep its centre outside the grown mask (and
    # its candidate on the rim). Filled in each axial slice, as lung segmentations do.
    return ndimage.binary_fill_holes(np.isin(labels, keep), structure=AXIAL_NEIGHBOURS), step


def lung_box(pre: Preprocessed, spec: ModelSpec) -> tuple[slice, slice, slice]:
    """The bounding box of both lungs plus a margin, in voxels of ``pre`` (whole volume if none)."""
    mask, step = lung_mask(pre, spec)
    if not mask.any():
        # Bounded slices, not open ones: a finding's lung zone is placed within the box.
        return tuple(slice(0, n) for n in pre.array.shape)  # type: ignore[return-value]
    idx = np.argwhere(mask)
    lo = idx.min(axis=0) * step
    hi = (idx.max(axis=0) + 1) * step
    margin = np.ceil(LUNG_MARGIN_MM / np.asarray(pre.spacing)).astype(int)
    shape = np.asarray(pre.array.shape)
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def lung_region(pre: Preprocessed, spec: ModelSpec, margin_mm: float = LUNG_GATE_MM) -> np.ndarray:
    """Full-resolution lung mask grown by ``margin_mm``, so juxtapleural nodules stay inside.

    The detector's map is kept only here: nodules are in the lungs, and soft tissue outside
    them (heart, liver, chest wall) is where a lung-trained network invents most false positives.
    """
    small, step = lung_mask(pre, spec)
    iterations = max(int(np.ceil(margin_mm / (min(pre.spacing) * step))), 1)
    grown = ndimage.binary_dilation(small, iterations=iterations) if small.any() else small
    full = np.zeros(pre.array.shape, dtype=bool)
    up = grown.repeat(step, 0).repeat(step, 1).repeat(step, 2)
    n = [min(a, b) for a, b in zip(full.shape, up.shape, strict=True)]
    full[: n[0], : n[1], : n[2]] = up[: n[0], : n[1], : n[2]]
    return full
