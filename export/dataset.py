"""Training and evaluation data: synthetic DICOM studies, preprocessed exactly as the job does.

Each study of a synthetic cohort is loaded through :func:`pipeline.volume.load_volume` and
:func:`pipeline.preprocess.preprocess` (the screening job's own code), and cached as one
``.npz`` (float16 image, lung box, nodules in voxel coordinates), so a model is trained and
measured on what it will see in production.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from export.networks import NODULE_TYPES
from export.spec import ModelSpec
from pipeline.postprocess import ras_to_lps
from pipeline.preprocess import Preprocessed, lung_box, preprocess
from pipeline.volume import load_volume


@dataclass(frozen=True)
class TruthNodule:
    """A ground-truth nodule in the preprocessed grid."""

    center_ijk: tuple[float, float, float]
    center_lps_mm: tuple[float, float, float]
    diameter_mm: float
    type_index: int
    malignant: bool
    malignancy_score: float


@dataclass(frozen=True)
class CachedStudy:
    """One preprocessed study and its truth."""

    key: str
    image: np.ndarray  # float32, 0..1
    affine: np.ndarray
    spacing: tuple[float, float, float]
    box: tuple[slice, slice, slice]
    nodules: tuple[TruthNodule, ...]

    @property
    def preprocessed(self) -> Preprocessed:
        return Preprocessed(self.image, self.affine, self.spacing)


def thin_series_files(study_dir: Path) -> list[str]:
    """The DICOM files of a clean synthetic study's thin series (its largest series folder)."""
    folders = [d for d in study_dir.iterdir() if d.is_dir()]
    if not folders:
        raise FileNotFoundError(f"{study_dir} has no series folders")
    thin = max(folders, key=lambda d: len(list(d.glob("*.dcm"))))
    return sorted(str(p) for p in thin.glob("*.dcm"))


def cache_study(
    study_dir: Path, truth_rows: list[dict], spec: ModelSpec, cache_path: Path, cache_key: str = ""
) -> Path:
    """Load, preprocess and save one study with its truth in voxel coordinates (and the
    :func:`cache_key` it was made from, so a cache is never reused for another study of the same
    folder name, for truth that has changed since, or for a model preprocessed otherwise)."""
    pre = preprocess(load_volume(thin_series_files(study_dir)), spec)
    box = lung_box(pre, spec)
    lps = np.array([[r["center_x_mm"], r["center_y_mm"], r["center_z_mm"]] for r in truth_rows]).reshape(
        -1, 3
    )
    ijk = (
        pre.ras_to_voxel(ras_to_lps(lps)) if len(lps) else np.zeros((0, 3))
    )  # LPS <-> RAS is its own inverse
    np.savez(
        cache_path,
        image=pre.array.astype(np.float16),
        affine=pre.affine,
        spacing=np.asarray(pre.spacing),
        box=np.array([[s.start, s.stop] for s in box]),
        center_ijk=ijk,
        center_lps=lps,
        diameter=np.array([r["diameter_mm"] for r in truth_rows], dtype=np.float64),
        type_index=np.array([NODULE_TYPES.index(r["type"]) for r in truth_rows], dtype=np.int64),
        malignant=np.array([r["malignant"] for r in truth_rows], dtype=bool),
        malignancy_score=np.array([r["malignancy_score"] for r in truth_rows], dtype=np.float64),
        cache_key=np.array(cache_key),
    )
    return cache_path


def load_cached(path: Path) -> CachedStudy:
    """Read a study written by :func:`cache_study`."""
    with np.load(path) as z:
        nodules = tuple(
            TruthNodule(tuple(c), tuple(p), float(d), int(t), bool(m), float(s))
            for c, p, d, t, m, s in zip(
                z["center_ijk"], z["center_lps"], z["diameter"], z["type_index"], z["malignant"],
                z["malignancy_score"], strict=True,
            )
        )  # fmt: skip
        box = tuple(slice(int(a), int(b)) for a, b in z["box"])
        return CachedStudy(
            key=path.stem,
            image=z["image"].astype(np.float32),
            affine=z["affine"],
            spacing=tuple(float(s) for s in z["spacing"]),
            box=box,  # type: ignore[arg-type]
            nodules=nodules,
        )


def cache_cohort(cohort_dir: Path, cache_dir: Path, spec: ModelSpec, workers: int = 1) -> list[Path]:
    """Cache every study of a clean synthetic cohort as ``spec`` preprocesses it (skipping those
    already cached from this very study, truth and preprocessing: same :func:`cache_key`).

    ``workers`` caches studies in that many processes.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    findings = pq.read_table(cohort_dir / "truth.parquet").to_pylist()
    studies = pq.read_table(cohort_dir / "truth_studies.parquet").to_pylist()
    paths = [cache_dir / f"{study['study_dir']}.npz" for study in studies]
    todo = []
    for study, path in zip(studies, paths, strict=True):
        rows = [f for f in findings if f["study_dir"] == study["study_dir"]]
        key = cache_key(study["study_instance_uid"], rows, spec)
        if _cached_key(path) != key:
            todo.append((cohort_dir / study["study_dir"], rows, spec, path, key))
    if workers <= 1 or len(todo) < 2:
        for args in todo:
            _cache_one(*args)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_cache_one, *zip(*todo, strict=True)))
    return paths


def cache_key(study_uid: str, truth_rows: list[dict], spec: ModelSpec) -> str:
    """The study's UID and a digest of its truth rows and of what ``spec`` preprocesses with: a
    cache is redone when any changes (a cohort generated again under the same folder names, a
    fixed generator, or a model on another grid, orientation or HU window)."""
    preprocessing = [spec.target_spacing_mm, spec.orientation, spec.hu_window]
    content = json.dumps([truth_rows, preprocessing], sort_keys=True, default=str)
    digest = hashlib.sha256(content.encode()).hexdigest()
    return f"{study_uid}/{digest[:16]}"


def _cached_key(path: Path) -> str | None:
    if not path.exists():
        return None
    with np.load(path) as z:
        return str(z["cache_key"]) if "cache_key" in z.files else None


def _cache_one(study_dir: Path, rows: list[dict], spec: ModelSpec, path: Path, key: str) -> Path:
    tmp = path.with_name(path.stem + ".partial.npz")
    cache_study(study_dir, rows, spec, tmp, key)
    return tmp.rename(path)


def iter_cached(paths: list[Path]) -> Iterator[CachedStudy]:
    """Load cached studies one at a time."""
    for path in paths:
        yield load_cached(path)
