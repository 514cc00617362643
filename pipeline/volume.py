"""Volume assembly: the files of one series -> a Hounsfield-unit volume with its affine.

Volume convention (see ``pipeline/README.md``): ``Volume.array`` is float32 HU indexed
``[i, j, k]`` with axes reoriented to the closest RAS directions (``i`` toward patient Right,
``j`` toward Anterior, ``k`` toward Superior; MONAI ``Orientation(axcodes="RAS")`` leaves it
unchanged), and ``Volume.affine`` is the 4x4 matrix mapping ``(i, j, k, 1)`` to RAS millimetres,
as MONAI's ``ITKReader``/``PydicomReader`` (``affine_lps_to_ras=True``) and ``MetaTensor`` use.

Slices are ordered by their position along the slice normal (never InstanceNumber); spacing must
be uniform; gaps, conflicting duplicates, gantry tilt and mixed orientations are rejected with a
:class:`~pipeline.errors.StudyError` whose reason code says what to do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pipeline.dicom_policy import CT_SOP_CLASSES, DEFAULT_POLICY, Policy, tolerate
from pipeline.errors import ReasonCode, StudyError
from pipeline.geometry import FramePlane, frame_planes, frame_rescale, slice_normal

STAGE = "load"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A CT volume in HU: ``array[i, j, k]`` (closest-RAS axes) and ``affine`` voxel -> RAS mm.

    ``spacing`` is the voxel size along i, j, k in mm, ``origin`` the RAS position of voxel
    (0, 0, 0), ``notes`` the QC notes (exact duplicates dropped, padding replaced, policy warnings).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Slice:
    plane: FramePlane
    hu: np.ndarray
    label: str


def _fail(reason: ReasonCode, message: str) -> StudyError:
    return StudyError(reason, message, stage=STAGE)


def _read(url: str, fs: fsspec.AbstractFileSystem | None, label: str) -> pydicom.Dataset:
    try:
        with (
            fs.open(url, "rb") if fs is not None else fsspec.open(url, "rb") as fh,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh)
            ds.PixelData  # noqa: B018  (force the value in while the file is open)
    except InvalidDicomError as exc:
        raise _fail(ReasonCode.NOT_DICOM, f"{label} is not a DICOM file; remove it from the series.") from exc
    except AttributeError as exc:
        raise _fail(
            ReasonCode.TRUNCATED_FILE, f"{label} ends before its pixel data: it was cut short; copy it again."
        ) from exc
    except OSError as exc:
        raise _fail(ReasonCode.UNREADABLE, f"{label} cannot be read ({type(exc).__name__}).") from exc
    return ds


def _check_native_length(ds: pydicom.Dataset, label: str) -> None:
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if syntax.is_encapsulated:
        return
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel") or 1) * frames * ds.BitsAllocated // 8
    if len(ds.PixelData) < expected:
        raise _fail(
            ReasonCode.TRUNCATED_FILE,
            f"{label}: pixel data cut short ({len(ds.PixelData)} of {expected} bytes); copy the file again.",
        )


def _padding_mask(ds: pydicom.Dataset, raw: np.ndarray) -> np.ndarray | None:
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit", pad)
    low, high = min(pad, limit), max(pad, limit)
    return (raw >= low) & (raw <= high)


def _decode(
    ds: pydicom.Dataset, label: str, policy: Policy, padding_hu: float, notes: list[str]
) -> list[_Slice]:
    _check_native_length(ds, label)
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # each decoder plugin raises its own kinds
        raise _fail(
            ReasonCode.DECODE_ERROR,
            f"{label}: cannot decode its {syntax.name} pixel data ({type(exc).__name__}: {str(exc)[:160]}). "
            "Install the pylibjpeg plugins, or convert the series to an uncompressed transfer syntax.",
        ) from exc
    if ds.get("LossyImageCompression") == "01":
        tolerate(policy, ReasonCode.DECODE_ERROR, "the pixel data is lossy-compressed", notes, stage=STAGE)
    planes = frame_planes(ds)
    frames = pixels.reshape((len(planes), *pixels.shape[-2:]))
    slices = []
    for index, (plane, raw) in enumerate(zip(planes, frames, strict=True)):
        slope, intercept = frame_rescale(ds, index)
        if slope is None or intercept is None:
            tolerate(
                policy,
                ReasonCode.DECODE_ERROR,
                "Rescale Slope/Intercept missing: 1 and 0 assumed",
                notes,
                stage=STAGE,
            )
        hu = raw.astype(np.float32) * np.float32(slope if slope is not None else 1.0) + np.float32(
            intercept or 0.0
        )
        mask = _padding_mask(ds, raw)
        if mask is not None and mask.any():
            hu[mask] = padding_hu
            notes.append(f"padding pixels set to {padding_hu:g} HU")
        slices.append(_Slice(plane, hu, f"{label} frame {index + 1}" if len(planes) > 1 else label))
    return slices


def _check_modality(ds: pydicom.Dataset, label: str, policy: Policy, notes: list[str]) -> None:
    modality = ds.get("Modality")
    if modality == "CT":
        return
    if not modality and str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES:
        tolerate(
            policy, ReasonCode.NOT_CT, "Modality missing: CT assumed from the SOP Class", notes, stage=STAGE
        )
        return
    raise _fail(
        ReasonCode.NOT_CT, f"{label} has Modality {modality or 'missing'}, not CT; select a CT series."
    )


def _check_planes(slices: Sequence[_Slice]) -> None:
    first = slices[0]
    for s in slices:
        if s.plane.position is None or s.plane.orientation is None or s.plane.pixel_spacing is None:
            raise _fail(
                ReasonCode.NO_SUITABLE_SERIES,
                f"{s.label} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing, "
                "so its slices cannot be placed in space.",
            )
        if not np.allclose(s.plane.orientation, first.plane.orientation, atol=1e-3):
            raise _fail(
                ReasonCode.MIXED_ORIENTATION,
                f"{s.label} has orientation {np.round(s.plane.orientation, 3).tolist()} but "
                f"{first.label} has {np.round(first.plane.orientation, 3).tolist()}: the series mixes "
                "orientations; split it or select another series.",
            )
        if s.hu.shape != first.hu.shape:
            raise _fail(
                ReasonCode.MIXED_ORIENTATION,
                f"{s.label} is {s.hu.shape[0]}x{s.hu.shape[1]} pixels but {first.label} is "
                f"{first.hu.shape[0]}x{first.hu.shape[1]}: the series mixes image geometries.",
            )
        if not np.allclose(s.plane.pixel_spacing, first.plane.pixel_spacing, rtol=1e-3):
            raise _fail(
                ReasonCode.NONUNIFORM_SPACING,
                f"{s.label} has pixel spacing {s.plane.pixel_spacing} but {first.label} has "
                f"{first.plane.pixel_spacing}: the in-plane spacing varies within the series.",
            )


def _drop_duplicates(ordered: list[tuple[float, _Slice]], tolerance_mm: float, notes: list[str]) -> list:
    kept = [ordered[0]]
    dropped = 0
    for d, s in ordered[1:]:
        if abs(d - kept[-1][0]) > tolerance_mm:
            kept.append((d, s))
        elif np.array_equal(s.hu, kept[-1][1].hu):
            dropped += 1
        else:
            raise _fail(
                ReasonCode.DUPLICATE_SLICES,
                f"{s.label} and {kept[-1][1].label} lie at the same position ({d:.2f} mm along the normal) "
                "with different pixels: the series mixes two acquisitions; split it or re-export it.",
            )
    if dropped:
        notes.append(f"{dropped} exact duplicate slice(s) dropped")
    return kept


def _check_tilt(positions: np.ndarray, normal: np.ndarray, tag_tilt: float, max_tilt_deg: float) -> None:
    if len(positions) > 1:
        stack = positions[-1] - positions[0]
        tilt = math.degrees(math.acos(min(1.0, abs(float(np.dot(stack, normal))) / np.linalg.norm(stack))))
        evidence = "the slice positions are sheared"
    else:
        tilt, evidence = abs(tag_tilt), "GantryDetectorTilt says so and one slice cannot show otherwise"
    if tilt > max_tilt_deg:
        raise _fail(
            ReasonCode.GANTRY_TILT,
            f"The series was acquired with a gantry tilt of {tilt:.1f} degrees ({evidence}); "
            "resample it to an orthogonal grid or choose a series without tilt.",
        )


def _slice_spacing(depths: np.ndarray, rel_tolerance: float) -> float:
    steps = np.diff(depths)
    step = float(np.median(steps))
    tolerance = max(0.005, rel_tolerance * step)
    multiples = np.rint(steps / step)
    off = np.abs(steps - multiples * step) > tolerance
    if off.any() or (multiples < 1).any():
        raise _fail(
            ReasonCode.NONUNIFORM_SPACING,
            f"Slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm (median {step:.3f} mm, "
            f"tolerance {tolerance:.3f} mm); the series cannot form a regular volume. Choose another series "
            "or resample it.",
        )
    gaps = np.flatnonzero(multiples > 1)
    if gaps.size:
        missing = int((multiples[gaps] - 1).sum())
        where = ", ".join(f"{depths[g]:.1f}..{depths[g + 1]:.1f} mm" for g in gaps[:3])
        raise _fail(
            ReasonCode.MISSING_SLICES,
            f"{missing} slice(s) missing at {where} along the slice normal (spacing {step:.3f} mm); "
            "fetch the complete series from the archive.",
        )
    return step


def closest_ras_layout(
    affine: np.ndarray, shape: Sequence[int]
) -> tuple[list[int], tuple[int, ...], np.ndarray]:
    """Axis permutation and flips that make axis w point closest to +RAS axis w, and the new affine.

    ``np.flip(np.transpose(array, perm), flips)`` is the array in that layout.
    """
    linear = affine[:3, :3]
    order: list[int | None] = [None, None, None]
    ranked = sorted(((abs(linear[w, a]), a, w) for a in range(3) for w in range(3)), reverse=True)
    for _, axis, world in ranked:
        if order[world] is None and axis not in order:
            order[world] = axis
    perm = [int(a) for a in order]  # type: ignore[arg-type]
    new_shape = [shape[a] for a in perm]
    out = affine.copy()
    out[:3, :3] = linear[:, perm]
    flips = []
    for world in range(3):
        if out[world, world] < 0:
            out[:3, 3] += out[:3, world] * (new_shape[world] - 1)
            out[:3, world] *= -1
            flips.append(world)
    return perm, tuple(flips), out


def _assemble(slices: Sequence[np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stack (rows, cols) slices along k straight into the closest-RAS layout (one copy, no temporaries).

    The output is allocated in its final layout and written through a strided view of it in
    acquisition order (cols, rows, slices): stacking first and reordering after cost two full
    passes over the volume, a quarter of the load stage on screening studies.
    """
    rows, cols = slices[0].shape
    perm, flips, ras_affine = closest_ras_layout(affine, (cols, rows, len(slices)))
    out = np.empty([(cols, rows, len(slices))[a] for a in perm], dtype=np.float32)
    acquisition = np.transpose(np.flip(out, flips) if flips else out, np.argsort(perm))
    for k, hu in enumerate(slices):
        acquisition[:, :, k] = hu.T
    return out, ras_affine


def load_volume(
    files: Sequence[str],
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    policy: Policy | str = DEFAULT_POLICY,
    spacing_tolerance: float = 0.02,
    duplicate_tolerance_mm: float = 0.01,
    max_tilt_deg: float = 0.5,
    padding_hu: float = -1024.0,
) -> Volume:
    """Assemble the files of one series (single- or multi-frame, any decodable syntax) into a Volume.

    ``files`` are local paths or URLs, opened with ``fs`` when given, else by fsspec from the URL.
    Slices are sorted along the slice normal; exact duplicates are dropped (QC note), and slice steps
    must agree with their median within ``spacing_tolerance`` (relative). Padding pixels
    (PixelPaddingValue/RangeLimit) become ``padding_hu``. A single slice gets its SliceThickness
    (else 1 mm) as the k spacing.

    Raises :class:`~pipeline.errors.StudyError` with ``NOT_DICOM``, ``UNREADABLE``,
    ``TRUNCATED_FILE``, ``DECODE_ERROR``, ``NOT_CT``, ``MIXED_ORIENTATION``, ``NONUNIFORM_SPACING``,
    ``DUPLICATE_SLICES``, ``MISSING_SLICES``, ``GANTRY_TILT`` or ``NO_SUITABLE_SERIES``.
    """
    if not files:
        raise _fail(ReasonCode.NO_SUITABLE_SERIES, "No files were given for the series.")
    policy = Policy(policy)
    notes: list[str] = []
    slices: list[_Slice] = []
    tag_tilt = 0.0
    for number, url in enumerate(files, start=1):
        label = f"file {number} of {len(files)}"
        ds = _read(url, fs, label)
        _check_modality(ds, label, policy, notes)
        tag_tilt = float(ds.get("GantryDetectorTilt") or 0.0) or tag_tilt
        slices.extend(_decode(ds, label, policy, padding_hu, notes))
    _check_planes(slices)
    normal = slice_normal(slices[0].plane.orientation)  # type: ignore[arg-type]
    ordered = sorted(((float(np.dot(normal, s.plane.position)), s) for s in slices), key=lambda x: x[0])
    kept = _drop_duplicates(ordered, duplicate_tolerance_mm, notes)
    positions = np.array([s.plane.position for _, s in kept], float)
    _check_tilt(positions, normal, tag_tilt, max_tilt_deg)
    if len(kept) > 1:
        step = _slice_spacing(np.array([d for d, _ in kept]), spacing_tolerance)
    else:
        step = kept[0][1].plane.thickness or 1.0
    first = kept[0][1].plane
    row_spacing, col_spacing = first.pixel_spacing  # type: ignore[misc]
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(first.orientation[:3]) * col_spacing  # type: ignore[index]
    lps[:3, 1] = np.asarray(first.orientation[3:6]) * row_spacing  # type: ignore[index]
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    array, affine = _assemble([s.hu for _, s in kept], LPS_TO_RAS @ lps)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    origin = tuple(float(v) for v in affine[:3, 3])
    return Volume(array, affine, spacing, origin, tuple(dict.fromkeys(notes)))  # type: ignore[arg-type]
