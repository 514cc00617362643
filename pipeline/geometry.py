"""Per-frame geometry and rescale of single-frame and enhanced multi-frame DICOM images.

Shared by the header index (positions along the slice normal, for coverage) and the volume loader.
All coordinates here are DICOM patient coordinates (LPS, millimetres).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset


@dataclass(frozen=True, slots=True)
class FramePlane:
    """Where one frame lies: ImagePositionPatient, ImageOrientationPatient, PixelSpacing (row, col)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None


def _floats(value: object) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` for ``frame``: per-frame functional group first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index:
            found = items[index].get(sequence)
            if found:
                return found[0]
    return None


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or empty."""
    return int(ds.get("NumberOfFrames") or 1)


def is_multiframe(ds: Dataset) -> bool:
    """Whether the geometry lives in functional groups (enhanced/legacy-converted multi-frame)."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def frame_planes(ds: Dataset) -> list[FramePlane]:
    """The plane of every frame; fields the header lacks are ``None``."""
    if not is_multiframe(ds):
        plane = FramePlane(
            _floats(ds.get("ImagePositionPatient")),  # type: ignore[arg-type]
            _floats(ds.get("ImageOrientationPatient")),
            _floats(ds.get("PixelSpacing")),  # type: ignore[arg-type]
            _float(ds.get("SliceThickness")),
        )
        return [plane] * number_of_frames(ds)
    planes = []
    for i in range(number_of_frames(ds)):
        pos = functional_group(ds, i, "PlanePositionSequence")
        ori = functional_group(ds, i, "PlaneOrientationSequence")
        meas = functional_group(ds, i, "PixelMeasuresSequence")
        planes.append(
            FramePlane(
                _floats(pos.get("ImagePositionPatient")) if pos else None,  # type: ignore[arg-type]
                _floats(ori.get("ImageOrientationPatient")) if ori else None,
                _floats(meas.get("PixelSpacing")) if meas else None,  # type: ignore[arg-type]
                _float(meas.get("SliceThickness")) if meas else None,
            )
        )
    return planes


def frame_rescale(ds: Dataset, frame: int) -> tuple[float | None, float | None]:
    """(RescaleSlope, RescaleIntercept) of ``frame``; ``None`` where the header has none."""
    source = functional_group(ds, frame, "PixelValueTransformationSequence") if is_multiframe(ds) else ds
    if source is None:
        source = ds
    return _float(source.get("RescaleSlope")), _float(source.get("RescaleIntercept"))


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The unit normal (row direction x column direction) of an ImageOrientationPatient."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise ValueError(
            f"ImageOrientationPatient {list(orientation)} has parallel or zero direction cosines"
        )
    return normal / norm


def normal_positions(planes: list[FramePlane]) -> list[float] | None:
    """Each frame's position projected on the first frame's slice normal, or None without geometry."""
    if not planes or planes[0].orientation is None or any(p.position is None for p in planes):
        return None
    try:
        normal = slice_normal(planes[0].orientation)
    except ValueError:
        return None
    return [float(np.dot(normal, p.position)) for p in planes]  # type: ignore[arg-type]
