"""Real CT files: ../shared/data/real-ct (skipped when absent) and pydicom's own CT test files.

Expected HU come from the raw pixels and the header's rescale (checked by hand against pydicom).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.dicom_policy import Policy
from pipeline.errors import ReasonCode, StudyError
from pipeline.index import OK, build_index, iter_studies
from pipeline.select import select_series
from pipeline.sources import open_source
from pipeline.volume import load_volume

pytestmark = pytest.mark.realdata

CT1 = "nema-ct1-chest/CT1_UNC"
CT1_FILES = [
    "explicit_big_endian",
    "implicit_little_endian",
    "fragmented_bot_jpeg_ls.80",
    "fragmented_no_bot_jpeg_ls.80",
    "not_fragmented_bot_jpeg_ls.80",
    "not_fragmented_no_bot_jpeg_ls.80",
]
CT12 = "nema-ct0012-head-multiframe/CT0012"
CT12_LOSSLESS = [
    "fragmented_no_bot_jpeg_lossless.57",
    "fragmented_no_bot_jpeg_lossless.70",
    "fragmented_no_bot_jpeg_ls.80",
    "not_fragmented_bot_jpeg_ls.80",
    "not_fragmented_no_bot_jpeg_ls.80",
    "not_fragmented_bot_rle",
    "not_fragmented_no_bot_rle",
]


def _load(real_ct: Path, *names: str, **kwargs) -> object:
    return load_volume([str(real_ct / n) for n in names], **kwargs)


def test_ct1_chest_reference(real_ct: Path) -> None:
    volume = _load(real_ct, f"{CT1}.explicit_little_endian.dcm")
    assert volume.array.shape == (512, 512, 1)
    assert (volume.array.min(), volume.array.max()) == (-1024.0, 1254.0)  # raw 0..2278, intercept -1024
    assert volume.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert volume.notes == ("padding pixels set to -1024 HU",)  # PixelPaddingValue -2000


@pytest.mark.parametrize("syntax", CT1_FILES)
def test_ct1_chest_every_syntax_gives_the_same_hu(real_ct: Path, syntax: str) -> None:
    reference = _load(real_ct, f"{CT1}.explicit_little_endian.dcm")
    volume = _load(real_ct, f"{CT1}.{syntax}.dcm")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine, reference.affine)


def test_ct0012_multiframe_reference(real_ct: Path) -> None:
    volume = _load(real_ct, f"{CT12}.explicit_little_endian.dcm")
    assert volume.array.shape == (512, 512, 2)  # two frames from the per-frame functional groups
    assert (volume.array.min(), volume.array.max()) == (-1024.0, 172.0)  # shared group rescale -1024
    assert volume.spacing == pytest.approx((0.388672, 0.388672, 10.0))


@pytest.mark.parametrize("syntax", CT12_LOSSLESS)
def test_ct0012_lossless_syntaxes_match(real_ct: Path, syntax: str) -> None:
    reference = _load(real_ct, f"{CT12}.explicit_little_endian.dcm")
    np.testing.assert_array_equal(_load(real_ct, f"{CT12}.{syntax}.dcm").array, reference.array)


def test_ct0012_near_lossless_jpeg_ls_within_two_hu(real_ct: Path) -> None:
    reference = _load(real_ct, f"{CT12}.explicit_little_endian.dcm")
    volume = _load(real_ct, f"{CT12}.fragmented_no_bot_jpeg_ls.81.dcm")
    assert np.abs(volume.array - reference.array).max() <= 2.0
    assert "the pixel data is lossy-compressed" in volume.notes


def test_ct0012_lossy_jpeg_baseline_is_flagged_and_its_offset_documented(real_ct: Path) -> None:
    """dcmtk shifted the stored values by +1023 when it made this lossy copy and left the rescale
    in the functional groups unchanged, so nothing in the header reveals the shift: the file
    loads (with the lossy note) but its HU are 1023 too high. RAISE refuses lossy input."""
    reference = _load(real_ct, f"{CT12}.explicit_little_endian.dcm")
    volume = _load(real_ct, f"{CT12}.fragmented_no_bot_jpeg_baseline.51.dcm")
    assert "the pixel data is lossy-compressed" in volume.notes
    assert np.median(volume.array - reference.array) == 1023.0
    with pytest.raises(StudyError, match="lossy") as info:
        _load(real_ct, f"{CT12}.fragmented_no_bot_jpeg_baseline.51.dcm", policy=Policy.RAISE)
    assert info.value.reason == ReasonCode.DECODE_ERROR


def test_gehc_three_slices_in_any_order(real_ct: Path) -> None:
    names = [f"gehc-abdomen-3slice/0{i}.dcm" for i in (2, 3, 1)]
    volume = _load(real_ct, *names)
    assert volume.array.shape == (512, 512, 3)
    assert (volume.array.min(), volume.array.max()) == (-1024.0, 1381.0)
    assert volume.spacing == pytest.approx((0.810547, 0.810547, 1.0))
    assert volume.origin[2] == pytest.approx(-128.690002)  # k runs inferior -> superior
    raw = pydicom.dcmread(real_ct / "gehc-abdomen-3slice/03.dcm").pixel_array  # the lowest slice
    expected = np.where(raw == -2000, -1024.0, raw - 1024.0).T[::-1, ::-1]
    np.testing.assert_array_equal(volume.array[:, :, 0], expected)


def test_stripped_header_without_modality_follows_policy(real_ct: Path) -> None:
    names = ["stripped-header-chest-2slice/1.dcm", "stripped-header-chest-2slice/0.dcm"]
    volume = _load(real_ct, *names)
    assert volume.notes == ("Modality missing: CT assumed from the SOP Class",)
    assert (volume.array.min(), volume.array.max()) == (-2048.0, 1502.0)  # intercept 0, no padding tag
    assert volume.spacing == pytest.approx((0.625, 0.625, 1.0))
    with pytest.raises(StudyError, match="Modality missing") as info:
        _load(real_ct, *names, policy=Policy.RAISE)
    assert info.value.reason == ReasonCode.NOT_CT


STUDY_OUTCOMES = {  # folder -> why the default screening rules refuse it
    "gehc-abdomen-3slice": ReasonCode.INSUFFICIENT_COVERAGE,
    "stripped-header-chest-2slice": ReasonCode.INSUFFICIENT_COVERAGE,
    "nema-ct1-chest": ReasonCode.THICK_SLICES,
    "nema-ct0012-head-multiframe": ReasonCode.NO_SUITABLE_SERIES,  # DERIVED perfusion map
}


def test_index_and_selection_of_the_real_folder(real_ct: Path) -> None:
    index = build_index(open_source(str(real_ct)))
    statuses = dict(zip(index["url"].to_pylist(), index["status"].to_pylist(), strict=True))
    assert {u for u, s in statuses.items() if s != OK} == {
        u for u in statuses if not u.endswith(".dcm")
    }  # README and LICENSE files are NOT_DICOM, every .dcm reads
    outcomes = {}
    for group in iter_studies(index):
        folder = Path(group.rows["url"][0].as_py()).parent.name
        with pytest.raises(StudyError) as info:
            select_series(group.rows)
        outcomes[folder] = info.value.reason
    assert outcomes == STUDY_OUTCOMES


PYDICOM_CASES = [
    ("CT_small.dcm", (-896.0, 1167.0), None),
    ("J2K_pixelrep_mismatch.dcm", None, ReasonCode.GANTRY_TILT),  # GantryDetectorTilt -22, one slice
]


@pytest.mark.parametrize(("name", "hu_range", "reason"), PYDICOM_CASES)
def test_pydicom_ct_files(name: str, hu_range, reason) -> None:
    files = [get_testdata_file(name)]
    if reason is not None:
        with pytest.raises(StudyError) as info:
            load_volume(files)
        assert info.value.reason == reason
        return
    volume = load_volume(files)
    assert (volume.array.min(), volume.array.max()) == hu_range


def test_pydicom_lossy_j2k_loads_with_a_note() -> None:
    volume = load_volume([get_testdata_file("693_J2KI.dcm")])
    assert "the pixel data is lossy-compressed" in volume.notes
    assert 1700.0 < volume.array.max() < 1900.0  # lossy: exact values depend on the openjpeg build


@pytest.mark.slow
def test_header_scan_beats_full_read(real_ct: Path, capsys) -> None:
    """Benchmark: files per second of the index against a plain full ``dcmread`` of the same files.

    Reported, not asserted against each other: on page-cached local files a full ``dcmread`` (which
    does not decode pixels) is as cheap as the header scan; the scan wins on object stores, where it
    fetches one small block per file instead of the whole file.
    """
    source = open_source(str(real_ct))
    files = [e.url for e in source.list_files() if e.url.endswith(".dcm")]
    start = time.perf_counter()
    build_index(source)
    indexed = time.perf_counter() - start
    start = time.perf_counter()
    for path in files:
        pydicom.dcmread(path).PixelData  # noqa: B018
    full = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nindex {len(files) / indexed:.0f} files/s vs full dcmread {len(files) / full:.0f} files/s")
    assert len(files) / indexed > 50  # sanity floor, even on a busy 2-core machine
