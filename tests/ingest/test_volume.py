"""Volume assembly: HU, affine convention, and every rejection reason, on tiny written series."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from pipeline.dicom_policy import Policy
from pipeline.errors import ReasonCode, StudyError
from pipeline.volume import load_volume

TAN15 = math.tan(math.radians(15))
Z = [-300.0 + 2.0 * i for i in range(6)]


def at(zs: list[float], dy: float = 0.0) -> list[tuple[float, float, float]]:
    return [(-100.0, -120.0 + dy * i, z) for i, z in enumerate(zs)]


def expected_hu(count: int, rows: int = 3, cols: int = 4) -> np.ndarray:
    """HU of a default axial series in the documented convention (closest RAS, i=R, j=A, k=S)."""
    r, c, k = np.mgrid[0:rows, 0:cols, 0:count]
    raw = (c + 10 * r + 100 * k + 10).astype(np.float32) - 1024.0  # [row, col, slice] in LPS order
    return raw.transpose(1, 0, 2)[::-1, ::-1, :]  # LPS columns/rows point to L/P: flip to R/A


def test_axial_series_hu_and_affine(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path, positions=at(Z))
    volume = load_volume(files[::-1])
    np.testing.assert_array_equal(volume.array, expected_hu(6))
    assert volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.0))
    # voxel (0, 0, 0) is the right-anterior-inferior corner: LPS (-100 + 3*0.7, -120 + 2*0.8, -300)
    assert volume.origin == pytest.approx((100.0 - 2.1, 120.0 - 1.6, -300.0))
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([0.7, 0.8, 2.0]), atol=1e-9)


def test_monai_reads_our_spacing(tmp_path: Path, write_series) -> None:
    from monai.data.utils import affine_to_spacing

    volume = load_volume(write_series(tmp_path, positions=at(Z), orientation=(-1, 0, 0, 0, -1, 0)))
    np.testing.assert_allclose(np.asarray(affine_to_spacing(volume.affine)), volume.spacing)
    assert np.all(np.diag(volume.affine)[:3] > 0)  # closest-RAS: each axis points along +R, +A, +S


def test_rle_equals_uncompressed(tmp_path: Path, write_series) -> None:
    plain = load_volume(write_series(tmp_path / "a", positions=at(Z)))
    rle = load_volume(write_series(tmp_path / "b", positions=at(Z), compress="rle"))
    np.testing.assert_array_equal(plain.array, rle.array)
    np.testing.assert_array_equal(plain.affine, rle.affine)


def test_exact_duplicate_is_dropped_with_a_note(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path, positions=at(Z))
    shutil.copy(files[2], tmp_path / "copy.dcm")
    volume = load_volume([*files, str(tmp_path / "copy.dcm")])
    assert volume.array.shape == (4, 3, 6)
    assert volume.notes == ("1 exact duplicate slice(s) dropped",)


def test_padding_becomes_air(tmp_path: Path, write_series) -> None:
    volume = load_volume(write_series(tmp_path, positions=at(Z), padding=10), padding_hu=-3000.0)
    assert (volume.array == -3000.0).sum() == 1  # raw 10 is slice 0, row 0, column 0 only
    assert "padding pixels set to -3000 HU" in volume.notes


def test_reads_through_fsspec(write_series) -> None:
    fs = fsspec.filesystem("memory")
    files = write_series("memory://vol-test", fs=fs, positions=at(Z))
    np.testing.assert_array_equal(load_volume(files, fs=fs).array, expected_hu(6))


def _truncate(files: list[str]) -> None:
    data = Path(files[2]).read_bytes()
    Path(files[2]).write_bytes(data[: len(data) - 10])


def _corrupt_rle(files: list[str]) -> None:
    data = bytearray(Path(files[1]).read_bytes())
    header = data.rfind(b"\xfe\xff\x00\xe0") + 8  # the RLE header: segment count, then offsets
    data[header + 4 : header + 8] = (10**6).to_bytes(4, "little")
    Path(files[1]).write_bytes(bytes(data))


FAILURES: list[tuple[str, dict[str, Any], Any, ReasonCode, str]] = [
    ("gap", {"positions": at(Z[:2] + Z[3:])}, None, ReasonCode.MISSING_SLICES, "1 slice"),
    ("uneven", {"positions": at([0, 2, 4, 6.6, 8.6])}, None, ReasonCode.NONUNIFORM_SPACING, "varies"),
    ("tilt", {"positions": at(Z, dy=2.0 * TAN15)}, None, ReasonCode.GANTRY_TILT, "15.0 degrees"),
    ("truncated", {"positions": at(Z)}, _truncate, ReasonCode.TRUNCATED_FILE, "cut short"),
    ("decode", {"positions": at(Z), "compress": "rle"}, _corrupt_rle, ReasonCode.DECODE_ERROR, "RLE"),
    ("mr", {"positions": at(Z), "modality": "MR"}, None, ReasonCode.NOT_CT, "Modality MR"),
]


@pytest.mark.parametrize(
    ("name", "spec", "damage", "reason", "match"), FAILURES, ids=[f[0] for f in FAILURES]
)
def test_rejections(tmp_path: Path, write_series, name, spec, damage, reason, match) -> None:
    files = write_series(tmp_path, **spec)
    if damage is not None:
        damage(files)
    with pytest.raises(StudyError, match=match) as info:
        load_volume(files)
    assert info.value.reason == reason
    assert info.value.stage == "load"
    assert "Patient" not in info.value.message and "PID-12345" not in info.value.message


def test_conflicting_duplicate(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path, positions=at(Z))
    extra = write_series(tmp_path, positions=at([Z[3]]), series_number=9)
    with pytest.raises(StudyError, match="same position") as info:
        load_volume(files + extra)
    assert info.value.reason == ReasonCode.DUPLICATE_SLICES


def test_mixed_orientation(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path, positions=at(Z))
    odd = write_series(tmp_path, positions=at([Z[-1] + 2.0]), orientation=(0, 1, 0, 1, 0, 0), series_number=9)
    with pytest.raises(StudyError, match="mixes orientations") as info:
        load_volume(files + odd)
    assert info.value.reason == ReasonCode.MIXED_ORIENTATION


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(StudyError) as info:
        load_volume([str(tmp_path / "notes.txt")])
    assert info.value.reason == ReasonCode.NOT_DICOM


def test_missing_modality_follows_policy(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path, positions=at(Z), modality=None)
    assert load_volume(files, policy=Policy.WARN).notes == (
        "Modality missing: CT assumed from the SOP Class",
    )
    assert load_volume(files, policy=Policy.IGNORE).notes == ()
    with pytest.raises(StudyError, match="policy RAISE") as info:
        load_volume(files, policy=Policy.RAISE)
    assert info.value.reason == ReasonCode.NOT_CT


@pytest.mark.slow
def test_monai_accepts_the_convention(tmp_path: Path, write_series) -> None:
    """MONAI's Orientation(RAS) is a no-op on our volumes, and its affine is ours."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nibabel", reason="MONAI's Orientation transform needs nibabel, not installed")
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    volume = load_volume(write_series(tmp_path, positions=at(Z), orientation=(-1, 0, 0, 0, -1, 0)))
    image = MetaTensor(torch.from_numpy(volume.array[None]), affine=torch.from_numpy(volume.affine))
    out = Orientation(axcodes="RAS")(image)
    np.testing.assert_array_equal(out.numpy()[0], volume.array)
    np.testing.assert_allclose(out.affine.numpy(), volume.affine)
