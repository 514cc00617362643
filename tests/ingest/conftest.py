"""Fixtures for the ingestion tests: tiny synthetic CT series written with pydicom.

Pixel values encode the voxel's place, ``raw = column + 10 * row + 100 * slice + 10``, so HU
after the default rescale (intercept -1024) is ``raw - 1024`` and any geometry mix-up shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

REAL_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def slice_pixels(index: int, rows: int, cols: int) -> np.ndarray:
    """The raw (stored) pixels of slice ``index`` in acquisition order."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (c + 10 * r + 100 * index + 10).astype(np.int16)


@dataclass
class SeriesSpec:
    """A tiny CT series; ``positions`` (mm along z) default to ``count`` slices ``spacing`` apart."""

    count: int = 5
    spacing: float = 2.0
    thickness: float | None = None
    rows: int = 3
    cols: int = 4
    pixel_spacing: tuple[float, float] = (0.8, 0.7)
    orientation: tuple[float, ...] = AXIAL
    positions: Sequence[Sequence[float]] | None = None
    modality: str | None = "CT"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    study_uid: str | None = None
    series_uid: str | None = None
    series_number: int = 2
    intercept: float = -1024.0
    padding: int | None = None
    compress: str | None = None
    pixels: Callable[[int], np.ndarray] | None = None  # slice index -> raw pixels; default slice_pixels
    extra: dict[str, Any] = field(default_factory=dict)

    def slice_positions(self) -> list[tuple[float, float, float]]:
        if self.positions is not None:
            return [tuple(map(float, p)) for p in self.positions]  # type: ignore[misc]
        return [(-100.0, -120.0, -300.0 + i * self.spacing) for i in range(self.count)]


def make_slice(spec: SeriesSpec, index: int, position: Sequence[float], pixels: np.ndarray) -> Dataset:
    """One CT image dataset of ``spec`` at ``position`` with ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = spec.study_uid or ""
    ds.SeriesInstanceUID = spec.series_uid or ""
    ds.FrameOfReferenceUID = "1.2.3.4"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19500101"
    if spec.modality is not None:
        ds.Modality = spec.modality
    ds.ImageType = list(spec.image_type)
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(spec.orientation)
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = spec.thickness if spec.thickness is not None else spec.spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, spec.intercept
    if spec.padding is not None:
        ds.PixelPaddingValue = spec.padding
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<i2").tobytes()
    if spec.compress == "rle":
        ds.compress(RLELossless)
    return ds


WriteSeries = Callable[..., list[str]]


@pytest.fixture
def write_series() -> WriteSeries:
    """``write_series(folder, spec=None, fs=None, **spec_fields) -> [url, ...]`` in acquisition order.

    ``folder`` is a local path or a URL on ``fs`` (for example ``memory://``); a study/series UID is
    generated unless the spec sets one (use ``""`` for an empty UID).
    """

    def write(folder: str | Path, spec: SeriesSpec | None = None, fs: Any = None, **fields: Any) -> list[str]:
        spec = spec or SeriesSpec(**fields)
        spec.study_uid = generate_uid() if spec.study_uid is None else spec.study_uid
        spec.series_uid = generate_uid() if spec.series_uid is None else spec.series_uid
        filesystem = fs or fsspec.filesystem("file")
        filesystem.makedirs(str(folder), exist_ok=True)
        urls = []
        for index, position in enumerate(spec.slice_positions()):
            pixels = spec.pixels(index) if spec.pixels else slice_pixels(index, spec.rows, spec.cols)
            ds = make_slice(spec, index, position, pixels)
            url = f"{folder}/s{spec.series_number:03d}_{index:04d}.dcm"
            with filesystem.open(url, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
            urls.append(url)
        return urls

    return write


@pytest.fixture
def real_ct() -> Path:
    """The shared real CT folder, or skip with the reason."""
    if not REAL_CT.is_dir():
        pytest.skip(
            f"real CT files absent: {REAL_CT.resolve()} not found (see shared/data/real-ct/README.md)"
        )
    return REAL_CT.resolve()
