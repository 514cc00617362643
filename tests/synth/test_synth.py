"""Tests of the synthetic chest CT cohort generator (small profile, a few seconds)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from pipeline.errors import ReasonCode
from pipeline.lungrads import study_category
from synth.anatomy import TISSUE_HU_RANGE, Tissue
from synth.cohort import NODULE_SCHEMA, STUDY_SCHEMA, generate_cohort, generate_study, render_study
from synth.dicom import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, read_series
from synth.faults import FAULT_NAMES, FAULTS
from synth.findings import (
    MIN_DRAWN_FRACTION,
    Nodule,
    apply_emphysema,
    laa950,
    lungrads_category,
    malignancy_score,
    visible_nodules,
)

SEED = 11
PROFILE = "small"
N_CLEAN = 4
N_STUDIES = len(FAULT_NAMES) + N_CLEAN


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cohort")
    summary = generate_cohort(out, N_STUDIES, SEED, PROFILE, faults="all")
    studies = pq.read_table(summary.studies_path).to_pylist()
    nodules = pq.read_table(summary.truth_path).to_pylist()
    return summary, studies, nodules


def _study(studies, fault):
    return next(s for s in studies if s["fault"] == fault)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in _files(folder) if f.suffix == ".dcm"]


def _series_dirs(study_dir: Path) -> dict[str, Path]:
    return {d.name: d for d in study_dir.iterdir() if d.is_dir()}


def _thin_dir(study_dir: Path) -> Path:
    return next(d for n, d in _series_dirs(study_dir).items() if n.startswith("3-"))


# --- truth tables ---------------------------------------------------------------------


def test_truth_tables_follow_the_schemas(cohort) -> None:
    summary, studies, nodules = cohort
    assert pq.read_schema(summary.truth_path).names == NODULE_SCHEMA.names
    assert pq.read_schema(summary.studies_path).names == STUDY_SCHEMA.names
    assert [s["study_index"] for s in studies] == list(range(N_STUDIES))
    assert sum(s["n_findings"] for s in studies) == len(nodules) > 0
    for s in studies:
        assert s["lungrads_category"] in {"1", "2", "3", "4A", "4B", "4X"}
        assert s["patient_id"].startswith("SYNTH-")
        assert s["expected_outcome"] == (FAULTS[s["fault"]].expected_outcome if s["fault"] else "ok")
        assert s["expected_outcome"] == "ok" or s["expected_outcome"] in set(ReasonCode)
        cats = [n["lungrads_category"] for n in nodules if n["study_index"] == s["study_index"]]
        assert s["lungrads_category"] == study_category(cats)
    for n in nodules:
        assert n["type"] in {"solid", "part_solid", "ground_glass", "calcified"}
        assert n["margin"] in {"smooth", "lobulated", "spiculated"}
        assert 3 <= n["diameter_mm"] <= 35
        assert n["volume_mm3"] >= MIN_DRAWN_FRACTION * np.pi / 6 * n["diameter_mm"] ** 3
        assert n["malignant"] == (n["malignancy_score"] >= 0.5)
    assert {s["fault"] for s in studies[: len(FAULT_NAMES)]} == set(FAULT_NAMES)


@pytest.mark.parametrize(
    ("typ", "margin", "loc", "d", "solid", "cat"),
    [
        ("calcified", "smooth", "isolated", 8, 8, "1"),
        ("solid", "smooth", "isolated", 5.9, 5.9, "2"),
        ("solid", "smooth", "isolated", 6.0, 6.0, "3"),
        ("solid", "lobulated", "isolated", 8.0, 8.0, "4A"),
        ("solid", "smooth", "isolated", 15.0, 15.0, "4B"),
        ("solid", "smooth", "juxtapleural", 9.0, 9.0, "2"),
        ("solid", "spiculated", "isolated", 9.0, 9.0, "4X"),
        ("solid", "spiculated", "isolated", 4.0, 4.0, "2"),
        ("part_solid", "smooth", "isolated", 5.0, 2.0, "2"),
        ("part_solid", "smooth", "isolated", 10.0, 5.0, "3"),
        ("part_solid", "smooth", "isolated", 10.0, 6.0, "4A"),
        ("part_solid", "lobulated", "isolated", 14.0, 8.0, "4B"),
        ("ground_glass", "smooth", "isolated", 29.9, 0.0, "2"),
        ("ground_glass", "smooth", "isolated", 30.0, 0.0, "3"),
    ],
)
def test_lungrads_v2022_mapping(typ, margin, loc, d, solid, cat) -> None:
    assert lungrads_category(typ, margin, loc, d, solid) == cat


def test_malignancy_rule_orders_risk() -> None:
    assert malignancy_score("calcified", "smooth", 30) < 0.05
    assert malignancy_score("solid", "smooth", 4) < 0.1
    assert malignancy_score("solid", "spiculated", 20) > 0.8
    assert malignancy_score("part_solid", "smooth", 12) > malignancy_score("solid", "smooth", 12)
    assert malignancy_score("ground_glass", "smooth", 12) < malignancy_score("solid", "smooth", 12)
    assert study_category([]) == "1"
    assert study_category(["2", "4X", "4B"]) == "4X"


def test_truth_lists_only_nodules_the_image_shows() -> None:
    drawn = [
        Nodule(k, "solid", "smooth", "juxtapleural", 6.0, 6.0, volume_mm3=v)
        for k, v in enumerate((0.0, 60.0, 20.0))
    ]
    kept = visible_nodules(drawn)  # a 6 mm sphere is 113 mm3: half of it drawn is kept, a sixth is not
    assert [n.volume_mm3 for n in kept] == [60.0]
    assert [n.finding_id for n in kept] == [0]


@pytest.mark.slow
def test_a_nodule_placed_under_the_great_vessels_is_not_in_the_truth() -> None:
    # Study 2 of seed 2002 places a 3 mm juxtapleural nodule where the great vessels are drawn:
    # nothing of it is drawn, so it must not be a truth nodule.
    study = render_study(2, 2002, "screening")
    assert study.nodules
    for nod in study.nodules:
        assert nod.volume_mm3 >= MIN_DRAWN_FRACTION * np.pi / 6 * nod.diameter_mm**3
        kji = np.round(study.anatomy.grid.to_index(np.asarray(nod.center_mm))).astype(int)
        assert study.anatomy.labels[tuple(kji)] == Tissue.NODULE


# --- series structure -------------------------------------------------------------------


def test_clean_study_has_localizer_thick_and_thin_series(cohort) -> None:
    summary, studies, _ = cohort
    for s in studies[len(FAULT_NAMES) :]:
        dirs = _series_dirs(summary.out / s["study_dir"])
        assert sorted(n.split("-")[0] for n in dirs) == ["1", "2", "3"]
        loc = _headers(dirs["1-localizer"])
        assert len(loc) == 1 and list(loc[0].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        thick = _headers(dirs["2-soft-5mm"])
        assert {float(h.SliceThickness) for h in thick} == {5.0}
        thin = _headers(_thin_dir(summary.out / s["study_dir"]))
        h0 = thin[0]
        assert h0.Modality == "CT" and h0.SOPClassUID == CT_IMAGE_STORAGE
        assert list(h0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert float(h0.SliceThickness) <= 2.5
        assert h0.Rows == h0.Columns == 128
        zs = sorted(float(h.ImagePositionPatient[2]) for h in thin)
        assert zs[-1] - zs[0] >= 250
        assert np.allclose(np.diff(zs), float(h0.SliceThickness), atol=1e-3)
        assert len({h.SOPInstanceUID for h in thin}) == len(thin)
        assert {h.StudyInstanceUID for h in [*loc, *thick, *thin]} == {s["study_instance_uid"]}
        assert len({h.SeriesInstanceUID for h in [loc[0], thick[0], h0]}) == 3
        assert h0.AccessionNumber == s["accession_number"]
        assert str(h0.PatientName) == f"SYNTH^{s['study_index']:04d}"
        assert h0.PatientPosition == s["patient_position"]
        assert float(h0.RescaleIntercept) == -1024 and float(h0.RescaleSlope) == 1
        assert h0.ConvolutionKernel and h0.Manufacturer
        row = np.asarray(h0.ImageOrientationPatient[:3], float)
        assert np.allclose(row, [1, 0, 0] if s["patient_position"] == "HFS" else [-1, 0, 0])
        assert (
            pydicom.dcmread(_files(dirs["2-soft-5mm"])[0]).file_meta.TransferSyntaxUID == s["transfer_syntax"]
        )


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"])
def test_every_transfer_syntax_round_trips_losslessly(tmp_path: Path, ts: str) -> None:
    from synth.dicom import SeriesPlan, StudyMeta, base_dataset, write_image

    meta = StudyMeta(
        "1.2.3",
        "1.2.4",
        "A1",
        "SYNTH^0001",
        "SYNTH-1",
        "19600101",
        "F",
        "064Y",
        "20240101",
        "101500",
        "X",
        "Y",
        "HFS",
        ts,
        "1",
        120.0,
        40.0,
    )
    plan = SeriesPlan(
        "thin", 3, "3-lung-1mm", "t", ("ORIGINAL", "PRIMARY", "AXIAL"), "1.2.5", "sharp", "B60f", 1.0
    )
    img = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    f = tmp_path / "0001.dcm"
    write_image(
        f,
        base_dataset(meta, plan),
        meta,
        sop_uid="1.2.6",
        instance=1,
        ipp=(0, 0, 0),
        iop=(1, 0, 0, 0, 1, 0),
        spacing=(1.0, 1.0),
        stored=img,
        intercept=-1024,
        window=(0, 1),
    )
    ds = pydicom.dcmread(f)
    assert ds.file_meta.TransferSyntaxUID == ts
    assert np.array_equal(ds.pixel_array, img)


# --- geometry round trip ----------------------------------------------------------------


def test_truth_centres_land_on_nodule_voxels(cohort) -> None:
    summary, studies, nodules = cohort
    checked = 0
    for s in studies:
        if s["fault"] not in (None, "duplicate_slices", "non_dicom_file"):
            continue
        these = [n for n in nodules if n["study_index"] == s["study_index"] and n["diameter_mm"] >= 8]
        if not these:
            continue
        vol = read_series(_thin_dir(summary.out / s["study_dir"]))
        rendered = render_study(s["study_index"], SEED, PROFILE)
        for n in these:
            c = (n["center_x_mm"], n["center_y_mm"], n["center_z_mm"])
            # in the clean volume the centre voxel is labelled as nodule
            kji = np.rint(rendered.anatomy.grid.to_index(np.asarray(c))).astype(int)
            assert rendered.anatomy.labels[tuple(kji)] == Tissue.NODULE
            # in the written files, via IPP/IOP/PixelSpacing, the centre is nodule-bright
            k, r, col = (round(v) for v in vol.to_voxel(c))
            centre = float(np.median(vol.hu[k - 1 : k + 2, r - 1 : r + 2, col - 1 : col + 2]))
            ring = vol.hu[k, max(r - 12, 0) : r + 13, max(col - 12, 0) : col + 13]
            background = float(np.percentile(ring, 25))
            floor = -700 if n["type"] == "ground_glass" else -350
            assert centre > floor, n
            assert centre - background > 150, n
            checked += 1
    assert checked >= 3


# --- determinism ------------------------------------------------------------------------


def _pixels(study_dir: Path) -> dict[str, np.ndarray]:
    return {
        str(f.relative_to(study_dir)): pydicom.dcmread(f).pixel_array
        for d in sorted(study_dir.iterdir())
        for f in _files(d)
    }


def test_same_seed_same_pixels_other_seed_other_pixels(cohort, tmp_path: Path) -> None:
    summary, studies, _ = cohort
    idx = N_STUDIES - 1
    original = summary.out / studies[idx]["study_dir"]
    again = generate_study(idx, SEED, PROFILE, None, out=tmp_path / "a")
    a, b = _pixels(original), _pixels(again.study_dir)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert again.study == studies[idx]
    other = generate_study(idx, SEED + 1, PROFILE, None, out=tmp_path / "b")
    assert other.study["study_instance_uid"] != studies[idx]["study_instance_uid"]
    c = _pixels(other.study_dir)
    common = sorted(set(a) & set(c))
    assert common and not all(a[k].shape == c[k].shape and np.array_equal(a[k], c[k]) for k in common)


def test_parallel_rendering_writes_the_same_cohort(cohort, tmp_path: Path) -> None:
    summary, studies, nodules = cohort
    parallel = generate_cohort(tmp_path / "p", 3, SEED, PROFILE, [s["fault"] for s in studies[:3]], workers=2)
    assert pq.read_table(parallel.studies_path).to_pylist() == studies[:3]
    assert pq.read_table(parallel.truth_path).to_pylist() == [
        n for n in nodules if n["study_dir"] in {s["study_dir"] for s in studies[:3]}
    ]
    for study in studies[:3]:
        a, b = _pixels(summary.out / study["study_dir"]), _pixels(parallel.out / study["study_dir"])
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- faults -----------------------------------------------------------------------------


def _thin_positions(headers) -> np.ndarray:
    return np.sort([float(h.ImagePositionPatient[2]) for h in headers])


def check_missing_slice(study_dir: Path) -> None:
    heads = _headers(_thin_dir(study_dir))
    d = np.diff(_thin_positions(heads))
    step = float(heads[0].SliceThickness)
    assert np.sum(np.isclose(d, 2 * step)) == 1 and np.sum(np.isclose(d, step)) == len(d) - 1
    inst = sorted(int(h.InstanceNumber) for h in heads)
    assert len(set(range(inst[0], inst[-1] + 1)) - set(inst)) == 1


def check_duplicate_slices(study_dir: Path) -> None:
    files = _files(_thin_dir(study_dir))
    by_pos: dict[float, list[pydicom.Dataset]] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_pos.setdefault(float(ds.ImagePositionPatient[2]), []).append(ds)
    dups = [v for v in by_pos.values() if len(v) > 1]
    assert len(dups) == 3
    for a, b in dups:
        assert a.SOPInstanceUID != b.SOPInstanceUID
        assert np.array_equal(a.pixel_array, b.pixel_array)


def check_uneven_spacing(study_dir: Path) -> None:
    d = np.diff(_thin_positions(_headers(_thin_dir(study_dir))))
    assert d.max() / d.min() > 1.4


def check_truncated_file(study_dir: Path) -> None:
    files = _files(_thin_dir(study_dir))
    bad = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)  # every header reads
        assert ds.Modality == "CT"
        try:
            pydicom.dcmread(f).pixel_array  # noqa: B018
        except Exception:
            bad.append(f)
    assert len(bad) == 1
    sizes = sorted(f.stat().st_size for f in files)
    assert bad[0].stat().st_size < sizes[len(sizes) // 2]


def check_non_dicom_file(study_dir: Path) -> None:
    strays = []
    for f in _files(_thin_dir(study_dir)):
        try:
            pydicom.dcmread(f)
        except InvalidDicomError:
            strays.append(f)
    assert len(strays) == 1
    assert strays[0].read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def check_non_ct(study_dir: Path) -> None:
    heads = [h for d in _series_dirs(study_dir).values() for h in _headers(d)]
    assert heads and all(h.Modality == "MR" and h.SOPClassUID == MR_IMAGE_STORAGE for h in heads)


def check_gantry_tilt(study_dir: Path) -> None:
    heads = _headers(_thin_dir(study_dir))
    tilt = float(heads[0].GantryDetectorTilt)
    assert abs(tilt) >= 10
    col = np.asarray(heads[0].ImageOrientationPatient[3:], float)
    assert np.isclose(col[2], np.sin(np.deg2rad(tilt)), atol=1e-4)
    ipp = np.array(sorted((np.asarray(h.ImagePositionPatient, float) for h in heads), key=lambda p: p[2]))
    step = np.diff(ipp, axis=0)
    assert np.allclose(step[:, :2], 0, atol=1e-3) and np.allclose(step[:, 2], step[0, 2], atol=1e-3)


def check_mixed_series(study_dir: Path) -> None:
    dirs = _series_dirs(study_dir)
    assert len(dirs) == 2 and not any(n.startswith("3-") for n in dirs)
    heads = _headers(dirs["2-soft-5mm"])
    by_series = {h.SeriesInstanceUID: float(h.SliceThickness) for h in heads}
    assert len(by_series) == 2 and 5.0 in by_series.values() and min(by_series.values()) <= 2.5


def check_empty_uids(study_dir: Path) -> None:
    heads = [h for d in _series_dirs(study_dir).values() for h in _headers(d)]
    assert heads and all(h.StudyInstanceUID == "" and h.SeriesInstanceUID == "" for h in heads)


def check_thick_only(study_dir: Path) -> None:
    dirs = _series_dirs(study_dir)
    assert sorted(dirs) == ["1-localizer", "2-soft-5mm"]


CHECKS = {name: globals()[f"check_{name}"] for name in FAULT_NAMES}


@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_fault_is_present_in_files(cohort, fault: str) -> None:
    summary, studies, _ = cohort
    s = _study(studies, fault)
    assert s["expected_outcome"] == FAULTS[fault].expected_outcome
    assert s["fault_detail"]
    CHECKS[fault](summary.out / s["study_dir"])


def test_fault_checks_fail_on_a_clean_study(cohort) -> None:
    summary, studies, _ = cohort
    clean = summary.out / studies[-1]["study_dir"]
    for name, check in CHECKS.items():
        with pytest.raises(AssertionError):
            check(clean)
        assert name


# --- HU statistics ----------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_clean_tissue_hu_in_range(index: int) -> None:
    r = render_study(index, SEED, PROFILE)
    lab, hu = r.anatomy.labels, r.anatomy.hu
    seen = 0
    for tissue, (lo, hi) in TISSUE_HU_RANGE.items():
        m = lab == tissue
        if tissue == Tissue.EMPHYSEMA and not m.any():
            continue
        assert m.sum() > 20, tissue
        assert lo <= float(hu[m].mean()) <= hi, (tissue, float(hu[m].mean()))
        seen += 1
    assert seen >= 10


def test_written_tissue_hu_in_range(cohort) -> None:
    summary, studies, _ = cohort
    s = next(s for s in studies[len(FAULT_NAMES) :] if s["patient_position"] == "HFS")
    vol = read_series(_thin_dir(summary.out / s["study_dir"]))
    lab = render_study(s["study_index"], SEED, PROFILE).anatomy.labels
    assert vol.hu.shape == lab.shape
    ranges = {
        Tissue.AIR: (-1030, -960),
        Tissue.LUNG: (-910, -790),
        Tissue.FAT: (-150, -50),
        Tissue.MUSCLE: (0, 90),
        Tissue.HEART: (0, 80),
        Tissue.BONE: (300, 1100),
    }
    for tissue, (lo, hi) in ranges.items():
        med = float(np.median(vol.hu[lab == tissue]))
        assert lo <= med <= hi, (tissue, med)


def test_emphysema_reaches_the_chosen_laa950_fraction() -> None:
    r = render_study(2, SEED, PROFILE)
    base = laa950(r.anatomy)
    apply_emphysema(r.anatomy, np.random.default_rng(zlib.crc32(b"emph")), 0.15)
    assert base < 0.02
    assert 0.11 <= laa950(r.anatomy) <= 0.19


# --- preview and CLI --------------------------------------------------------------------


def _check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] >= 400 and img.shape[1] >= 600
    assert path.stat().st_size > 20_000
    assert float(np.std(img[..., :3])) > 0.05


def test_preview_png_through_a_nodule(cohort, tmp_path: Path) -> None:
    from synth.preview import write_preview

    summary, _studies, nodules = cohort
    big = max(nodules, key=lambda n: n["diameter_mm"])
    png = write_preview(summary.out / big["study_dir"], tmp_path / "preview.png")
    _check_png(png)


def test_cli_writes_cohort_and_preview(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from synth.cli import synth_command

    app = typer.Typer()
    app.command()(synth_command)
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "--studies",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--profile",
            "small",
            "--faults",
            "none,thick_only",
            "--preview",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out / "truth_studies.parquet").to_pylist()
    assert [r["fault"] for r in rows] == [None, "thick_only"]
    _check_png(out / "preview.png")
    bad = CliRunner().invoke(app, ["--studies", "1", "--out", str(out), "--faults", "nope"])
    assert bad.exit_code != 0
