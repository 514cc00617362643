"""Synthetic cohorts: one study at a time, reproducible from ``(seed, index, profile, fault)``.

:func:`render_study` makes the clean volume and its truth (no files); :func:`generate_study`
writes one study's DICOM series; :func:`iter_studies` streams a cohort;
:func:`generate_cohort` also writes ``truth.parquet`` and ``truth_studies.parquet``.
At most one study's volumes are in memory at any time.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import shutil
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.lungrads import study_category
from synth import acquisition as acq_mod
from synth.acquisition import Acquisition, get_profile
from synth.anatomy import Anatomy, render_anatomy, sample_anatomy
from synth.dicom import SeriesPlan, StudyMeta, base_dataset, synth_uid, write_image
from synth.faults import FAULT_NAMES, check_fault, expected_outcome, plan_fault, post_write_fault
from synth.findings import (
    Nodule,
    apply_emphysema,
    laa950,
    place_nodules,
    render_nodule,
    sample_nodules,
    visible_nodules,
)

NODULE_SCHEMA = pa.schema(
    [
        ("study_index", pa.int32()),
        ("study_dir", pa.string()),
        ("study_instance_uid", pa.string()),
        ("accession_number", pa.string()),
        ("finding_id", pa.int32()),
        ("center_x_mm", pa.float64()),
        ("center_y_mm", pa.float64()),
        ("center_z_mm", pa.float64()),
        ("diameter_mm", pa.float64()),
        ("solid_diameter_mm", pa.float64()),
        ("volume_mm3", pa.float64()),
        ("type", pa.string()),
        ("margin", pa.string()),
        ("location", pa.string()),
        ("region", pa.string()),
        ("malignant", pa.bool_()),
        ("malignancy_score", pa.float64()),
        ("lungrads_category", pa.string()),
    ]
)

STUDY_SCHEMA = pa.schema(
    [
        ("study_index", pa.int32()),
        ("study_dir", pa.string()),
        ("study_instance_uid", pa.string()),
        ("accession_number", pa.string()),
        ("patient_id", pa.string()),
        ("n_findings", pa.int32()),
        ("lungrads_category", pa.string()),
        ("laa950_fraction", pa.float64()),
        ("kernel", pa.string()),
        ("thin_slice_thickness_mm", pa.float64()),
        ("patient_position", pa.string()),
        ("transfer_syntax", pa.string()),
        ("fault", pa.string()),
        ("expected_outcome", pa.string()),
        ("fault_detail", pa.string()),
        ("profile", pa.string()),
        ("seed", pa.int64()),
        ("pixel_spacing_mm", pa.float64()),
        ("n_thin_slices", pa.int32()),
        ("manufacturer", pa.string()),
    ]
)


@dataclass
class StudyTruth:
    """The truth of one written study: a ``truth_studies`` row and its ``truth`` rows."""

    study: dict[str, Any]
    findings: list[dict[str, Any]]
    study_dir: Path


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out: Path
    studies: int
    truth_path: Path
    studies_path: Path
    findings: int
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RenderedStudy:
    """One study before writing: its patient, scan, findings and clean volume."""

    index: int
    seed: int
    profile: str
    anatomy: Anatomy
    acquisition: Acquisition
    nodules: list[Nodule]
    laa950: float
    emphysema_target: float

    @property
    def study_dir(self) -> str:
        return f"study-{self.index:04d}"


def _seed_seq(seed: int, index: int, profile: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, index, zlib.crc32(profile.encode()), zlib.crc32(purpose.encode())])


def render_study(index: int, seed: int, profile: str = "screening") -> RenderedStudy:
    """Render study ``index`` of the cohort ``(seed, profile)`` in memory: anatomy + findings.

    Pure: the result depends only on the arguments (faults change only the files).
    """
    prof = get_profile(profile)
    rng_a = _seed_seq(seed, index, profile, "anatomy")
    max_h = prof.thin_thickness_mm[-1] * (prof.max_slices - 1) - 35
    params = sample_anatomy(rng_a, max_lung_height=max_h)
    acq = acq_mod.sample_acquisition(
        _seed_seq(seed, index, profile, "acquisition"),
        prof,
        body_half_width=params.body_a * 1.04,
        center_x=params.center_x,
        z_base=params.z_base,
        lung_height=params.lung_height,
        size=params.body_a / 160.0,
    )
    anat = render_anatomy(
        params,
        acq.grid,
        _seed_seq(seed, index, profile, "texture"),
        min_vessel_radius=prof.min_vessel_radius_mm,
        max_tree_segments=prof.max_tree_segments,
        min_airway_radius=prof.min_airway_radius_mm,
    )
    rng_f = _seed_seq(seed, index, profile, "findings")
    emph = float(rng_f.uniform(0.03, 0.25)) if rng_f.uniform() < prof.emphysema_probability else 0.0
    apply_emphysema(anat, rng_f, emph)
    nodules = place_nodules(rng_f, anat, sample_nodules(rng_f, prof.nodule_mean))
    for nod in nodules:
        nod.volume_mm3 = render_nodule(anat, nod, rng_f)
    return RenderedStudy(index, seed, profile, anat, acq, visible_nodules(nodules), laa950(anat), emph)


def study_meta(r: RenderedStudy, fault: str | None) -> StudyMeta:
    """Patient/study attributes: synthetic names, deterministic UIDs and dates."""
    rng = _seed_seq(r.seed, r.index, r.profile, "meta")
    key = (r.seed, r.index, r.profile, fault or "clean")
    age = int(rng.integers(50, 81))
    date = dt.date(2023, 1, 2) + dt.timedelta(days=int(rng.integers(0, 730)))
    birth = date - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 300)))
    p = r.anatomy.params
    a = r.acquisition
    return StudyMeta(
        study_uid=synth_uid(*key, "study"),
        frame_uid=synth_uid(*key, "frame"),
        accession=f"SYN{r.seed % 1_000_000:06d}{r.index:05d}",
        patient_name=f"SYNTH^{r.index:04d}",
        patient_id=f"SYNTH-{r.seed}-{r.index:04d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=p.sex,
        age=f"{age:03d}Y",
        study_date=date.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
        manufacturer=a.manufacturer,
        model=a.model,
        patient_position=a.patient_position,
        transfer_syntax=a.transfer_syntax,
        study_id=f"{r.index + 1}",
        kvp=a.kvp,
        mas=a.mas,
    )


def plan_series(r: RenderedStudy, fault: str | None) -> list[SeriesPlan]:
    """The localizer, the thick soft-tissue recon and the thin lung recon of a study."""
    a = r.acquisition
    zs = r.anatomy.grid.zs
    key = (r.seed, r.index, r.profile, fault or "clean")
    thick_z = []
    zc = zs[0] - a.grid.spacing[2] / 2 + a.thick_mm / 2
    while zc + a.thick_mm / 2 <= zs[-1] + a.grid.spacing[2] / 2 + 1e-6:
        thick_z.append(float(zc))
        zc += a.thick_mm
    thk = a.thin_thickness_mm
    thin_name = "LUNG" if a.kernel == "sharp" else "THIN SOFT"
    return [
        SeriesPlan(
            "localizer",
            1,
            "1-localizer",
            "Topogram 0.6 T20s",
            ("ORIGINAL", "PRIMARY", "LOCALIZER"),
            synth_uid(*key, "series", 1),
            "soft",
            a.kernel_names["soft"],
            thk,
        ),
        SeriesPlan(
            "thick",
            2,
            f"2-soft-{a.thick_mm:g}mm",
            f"Thorax {a.thick_mm:g}mm soft tissue",
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            synth_uid(*key, "series", 2),
            "soft",
            a.kernel_names["soft"],
            a.thick_mm,
            thick_z,
        ),
        SeriesPlan(
            "thin",
            3,
            f"3-lung-{thk:g}mm",
            f"Thorax {thk:g}mm {thin_name}",
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            synth_uid(*key, "series", 3),
            a.kernel,
            a.kernel_names[a.kernel],
            thk,
            [float(z) for z in zs],
        ),
    ]


def _write_series(
    r: RenderedStudy, meta: StudyMeta, s: SeriesPlan, sdir: Path, key: tuple
) -> tuple[list[Path], dict[Path, int]]:
    """Write one series; returns the primary files (not duplicates) and Pixel Data lengths."""
    a = r.acquisition
    g = r.anatomy.grid
    clean = r.anatomy.hu
    sdir.mkdir(parents=True, exist_ok=True)
    base = base_dataset(meta, s)
    px = g.spacing[0]
    nr, nc = g.shape[1], g.shape[2]
    files: list[Path] = []
    nbytes: dict[Path, int] = {}
    if s.role == "localizer":
        img = acq_mod.localizer_image(clean)
        ipp = (g.origin[0], 0.0, float(g.zs[-1]))
        f = sdir / f"{s.file_offset + 1:04d}.dcm"
        nbytes[f] = write_image(
            f,
            base,
            meta,
            sop_uid=synth_uid(*key, s.number, 1),
            instance=1,
            ipp=ipp,
            iop=(1, 0, 0, 0, 0, -1),
            spacing=(g.spacing[2], px),
            stored=img,
            intercept=0.0,
            window=(1500, 3000),
        )
        return [f], nbytes
    ffs = meta.patient_position == "FFS"
    sd = a.noise_thin if s.role == "thin" else a.noise_thick
    row = np.array([-1.0 if ffs else 1.0, 0.0, 0.0])
    t = np.deg2rad(s.tilt_deg)
    col = np.array([0.0, np.cos(t), np.sin(t)])
    order = sorted(range(len(s.z_positions)), key=lambda k: s.z_positions[k], reverse=not ffs)
    written = 0
    window = (-600, 1500) if s.kernel == "sharp" else (40, 400)
    for inst, k in enumerate(order, start=1):
        if k in s.drop:
            continue
        z = s.z_positions[k]
        rng = np.random.default_rng([*map(zlib.crc32, map(lambda v: str(v).encode(), key)), s.number, k])
        if s.tilt_deg:
            centre = np.array([0.0, 0.0, z])
            ipp = centre - (nc - 1) / 2 * px * row - (nr - 1) / 2 * px * col
            img = acq_mod.tilted_image(clean, g, ipp, row, col, s.kernel, sd, rng)
        else:
            img = acq_mod.axial_image(clean, g, z, s.thickness, s.kernel, sd, rng)
            if ffs:
                img = img[:, ::-1]
            ipp = np.array([g.origin[0] + (nc - 1) * px if ffs else g.origin[0], g.origin[1], z])
        stored = np.rint(img + 1024).astype(np.uint16)
        copies = [synth_uid(*key, s.number, k)]
        if k in s.duplicate:
            copies.append(synth_uid(*key, s.number, k, "duplicate"))
        for c, uid in enumerate(copies):
            written += 1
            f = sdir / f"{s.file_offset + written:04d}.dcm"
            nbytes[f] = write_image(
                f,
                base,
                meta,
                sop_uid=uid,
                instance=inst,
                ipp=ipp,
                iop=(*row, *col),
                spacing=(px, px),
                stored=stored,
                intercept=-1024.0,
                window=window,
                slice_location=float(ipp[2]),
            )
            if c == 0:
                files.append(f)
    return files, nbytes


def write_study(r: RenderedStudy, out: Path, fault: str | None = None) -> StudyTruth:
    """Write the DICOM files of a rendered study under ``out/study-NNNN`` and return its truth."""
    check_fault(fault)
    sdir = Path(out) / r.study_dir
    if sdir.exists():
        shutil.rmtree(sdir)
    meta = study_meta(r, fault)
    rng_fault = _seed_seq(r.seed, r.index, r.profile, f"fault:{fault}")
    meta, series, detail = plan_fault(fault, meta, plan_series(r, fault), rng_fault)
    key = (r.seed, r.index, r.profile, fault or "clean")
    thin_files: list[Path] = []
    thin_dir = None
    nbytes: dict[Path, int] = {}
    for s in series:
        files, nb = _write_series(r, meta, s, sdir / s.dir_name, key)
        nbytes.update(nb)
        if s.role == "thin":
            thin_files, thin_dir = files, sdir / s.dir_name
    mid = r.anatomy.hu[r.anatomy.grid.shape[0] // 2]
    extra = post_write_fault(fault, thin_files, nbytes, thin_dir, mid, rng_fault)
    detail = "; ".join(v for v in (detail, extra) if v)
    a = r.acquisition
    study = {
        "study_index": r.index,
        "study_dir": r.study_dir,
        "study_instance_uid": meta.study_uid,
        "accession_number": meta.accession,
        "patient_id": meta.patient_id,
        "n_findings": len(r.nodules),
        "lungrads_category": study_category([n.category for n in r.nodules]),
        "laa950_fraction": r.laa950,
        "kernel": a.kernel,
        "thin_slice_thickness_mm": a.thin_thickness_mm,
        "patient_position": a.patient_position,
        "transfer_syntax": a.transfer_syntax,
        "fault": fault,
        "expected_outcome": expected_outcome(fault),
        "fault_detail": detail or None,
        "profile": r.profile,
        "seed": r.seed,
        "pixel_spacing_mm": a.grid.spacing[0],
        "n_thin_slices": len(thin_files),
        "manufacturer": a.manufacturer,
    }
    findings = [
        {
            "study_index": r.index,
            "study_dir": r.study_dir,
            "study_instance_uid": meta.study_uid,
            "accession_number": meta.accession,
            "finding_id": n.finding_id,
            "center_x_mm": n.center_mm[0],
            "center_y_mm": n.center_mm[1],
            "center_z_mm": n.center_mm[2],
            "diameter_mm": round(n.diameter_mm, 2),
            "solid_diameter_mm": round(n.solid_diameter_mm, 2),
            "volume_mm3": n.volume_mm3,
            "type": n.type,
            "margin": n.margin,
            "location": n.location,
            "region": n.region,
            "malignant": n.malignant,
            "malignancy_score": n.malignancy_score,
            "lungrads_category": n.category,
        }
        for n in r.nodules
    ]
    return StudyTruth(study, findings, sdir)


def generate_study(
    index: int, seed: int, profile: str = "screening", fault: str | None = None, *, out: Path
) -> StudyTruth:
    """Render and write one study; its content depends only on the arguments."""
    return write_study(render_study(index, seed, profile), out, fault)


def normalize_faults(
    studies: int, faults: Sequence[str | None] | Mapping[int, str | None] | str | None
) -> list[str | None]:
    """Per-study fault list from a list, a mapping index -> fault, ``"all"`` or None."""
    out: list[str | None] = [None] * studies
    if faults is None:
        return out
    if isinstance(faults, str):
        if faults != "all":
            raise ValueError("faults given as a string must be 'all'")
        faults = list(FAULT_NAMES)
    items = faults.items() if isinstance(faults, Mapping) else enumerate(faults)
    for i, f in items:
        if not 0 <= int(i) < studies:
            raise ValueError(f"fault for study {i} but the cohort has {studies} studies")
        f = None if f in (None, "", "none") else str(f)
        check_fault(f)
        out[int(i)] = f
    return out


def iter_studies(
    out: Path,
    studies: int,
    seed: int,
    profile: str = "screening",
    faults: Sequence[str | None] | Mapping[int, str | None] | str | None = None,
    workers: int = 1,
) -> Iterator[StudyTruth]:
    """Write studies ``0..studies-1``, yielding each study's truth in index order.

    With ``workers > 1`` studies render in that many processes; each study depends only on its
    index and the seed, so the cohort is the same whatever the number of workers.
    """
    get_profile(profile)
    per_study = normalize_faults(studies, faults)
    Path(out).mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        for i in range(studies):
            yield generate_study(i, seed, profile, per_study[i], out=Path(out))
        return
    # spawn, not fork: the parent may hold threads (torch, Dask) that a fork would copy mid-state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(generate_study, i, seed, profile, per_study[i], out=Path(out)) for i in range(studies)
        ]
        for job in jobs:
            yield job.result()


def generate_cohort(
    out: Path,
    studies: int,
    seed: int,
    profile: str = "screening",
    faults: Sequence[str | None] | Mapping[int, str | None] | str | None = None,
    workers: int = 1,
) -> CohortSummary:
    """Write a whole cohort and its truth tables (``truth.parquet``, ``truth_studies.parquet``).

    ``workers`` renders studies in parallel processes (same cohort, see :func:`iter_studies`).
    """
    import time

    t0 = time.perf_counter()
    out = Path(out)
    study_rows: list[dict[str, Any]] = []
    finding_rows: list[dict[str, Any]] = []
    for truth in iter_studies(out, studies, seed, profile, faults, workers):
        study_rows.append(truth.study)
        finding_rows.extend(truth.findings)
    truth_path = out / "truth.parquet"
    studies_path = out / "truth_studies.parquet"
    pq.write_table(pa.Table.from_pylist(finding_rows, schema=NODULE_SCHEMA), truth_path)
    pq.write_table(pa.Table.from_pylist(study_rows, schema=STUDY_SCHEMA), studies_path)
    counts: dict[str, int] = {}
    for row in study_rows:
        if row["fault"]:
            counts[row["fault"]] = counts.get(row["fault"], 0) + 1
    return CohortSummary(
        out, studies, truth_path, studies_path, len(finding_rows), counts, time.perf_counter() - t0
    )
