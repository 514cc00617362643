"""Evaluation on a held-out synthetic cohort: FROC and CPM the LUNA16 way, malignancy AUC,
nodule-type accuracy, by size band.

A candidate is a hit when its centre lies within the radius of a truth nodule; several hits
on one nodule count once (the best score), and neither is a false positive. Candidates come
from :func:`pipeline.analysis.analyze`, the screening job's own code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from export.dataset import CachedStudy, TruthNodule, thin_series_files
from export.networks import NODULE_TYPES
from export.spec import ModelSpec
from pipeline.analysis import DETECTOR_SCORE_WEIGHT, AnalysisConfig, Finding, analyze, finding_score
from pipeline.preprocess import same_grid
from pipeline.volume import load_volume

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SIZE_BANDS = ((3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 36.0))
# Detector weights of a finding's score tried on the tuning cohort (see choose_score_weight).
SCORE_WEIGHTS = tuple(round(0.1 * k, 1) for k in range(11))


class TorchRunner:
    """Runs named PyTorch modules in this process (evaluation and the plain baseline)."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        self.models = {name: m.eval() for name, m in models.items()}

    def run_many(self, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [self.models[model](torch.from_numpy(np.ascontiguousarray(b))).numpy() for b in batches]


@dataclass
class Match:
    """A truth nodule and the best candidate that hit it (None when missed)."""

    diameter_mm: float
    malignant: bool
    type_index: int
    finding: Finding | None


@dataclass
class StudyResult:
    """The evaluation record of one study."""

    matches: list[Match]
    false_positive_scores: list[float]


def match_study(findings: Sequence[Finding], nodules: Sequence[TruthNodule]) -> StudyResult:
    """LUNA16 matching of one study's candidates to its truth nodules."""
    matches = [Match(n.diameter_mm, n.malignant, n.type_index, None) for n in nodules]
    centres = np.array([n.center_lps_mm for n in nodules]).reshape(-1, 3)
    radii = np.array([n.diameter_mm / 2.0 for n in nodules])
    fps: list[float] = []
    for f in findings:
        if len(centres):
            dist = np.linalg.norm(centres - np.asarray(f.center_lps_mm), axis=1)
            hits = np.flatnonzero(dist <= radii)
        else:
            hits = np.array([], dtype=int)
        if hits.size == 0:
            fps.append(f.score)
            continue
        best = int(hits[np.argmin(dist[hits])])
        current = matches[best].finding
        if current is None or f.score > current.score:
            matches[best].finding = f
    return StudyResult(matches, fps)


@dataclass
class Evaluation:
    """Everything the model cards report."""

    studies: int
    nodules: int
    fp_rates: list[float]
    sensitivity: list[float]
    cpm: float
    sensitivity_1fp_6mm_plus: float
    threshold_1fp: float
    by_size_band: dict[str, dict[str, float]] = field(default_factory=dict)
    malignancy_auc: float = float("nan")
    malignancy_pairs: int = 0
    type_accuracy: float = float("nan")
    type_n: int = 0
    curve_fps: list[float] = field(default_factory=list)
    curve_sens: list[float] = field(default_factory=list)
    # The score weight the figures were measured at, chosen on the tuning cohort when ``tuning``
    # is set (see :func:`choose_score_weight`).
    score_weight: float = DETECTOR_SCORE_WEIGHT
    tuning: OperatingPoint | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class OperatingPoint:
    """A pair of models' score weight and report threshold, chosen on a tuning cohort (another
    seed than the held-out one, never trained on), so the held-out figures stay unbiased."""

    score_weight: float
    report_threshold: float  # the tuning cohort's 1 FP/scan point at that weight
    cpm_by_weight: dict[str, float]
    studies: int
    nodules: int
    seed: int | None = None


@dataclass(frozen=True)
class StudyFindings:
    """One study's findings (any score weight) and its truth, without its pixels."""

    findings: list[Finding]
    nodules: tuple[TruthNodule, ...]


def with_score_weight(findings: Sequence[Finding], weight: float) -> list[Finding]:
    """The findings scored with another detector weight (see :func:`pipeline.analysis.finding_score`)."""
    return [replace(f, score=finding_score(f.detector_score, f.nodule_probability, weight)) for f in findings]


def summarize_at(cohort: Sequence[StudyFindings], weight: float) -> Evaluation:
    """:func:`summarize` of a cohort's findings scored with ``weight``."""
    ev = summarize([match_study(with_score_weight(s.findings, weight), s.nodules) for s in cohort])
    ev.score_weight = weight
    return ev


def choose_score_weight(
    cohort: Sequence[StudyFindings], weights: Sequence[float] = SCORE_WEIGHTS, seed: int | None = None
) -> OperatingPoint:
    """The weight with the best CPM on ``cohort`` (ties: the better sensitivity at 1 FP/scan for
    nodules >= 6 mm, then the first in ``weights``), and its 1 FP/scan threshold."""
    if not weights:
        raise ValueError("choose_score_weight needs at least one weight to try")
    evaluations = {w: summarize_at(cohort, w) for w in weights}
    best = max(
        weights,
        key=lambda w: (evaluations[w].cpm, np.nan_to_num(evaluations[w].sensitivity_1fp_6mm_plus, nan=0.0)),
    )
    return OperatingPoint(
        score_weight=best,
        report_threshold=evaluations[best].threshold_1fp,
        cpm_by_weight={f"{w:g}": evaluations[w].cpm for w in weights},
        studies=len(cohort),
        nodules=sum(len(s.nodules) for s in cohort),
        seed=seed,
    )


def froc_curve(results: Sequence[StudyResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPs per scan, sensitivity, threshold) at every distinct score, highest threshold first."""
    n_scans = max(len(results), 1)
    n_nodules = sum(len(r.matches) for r in results)
    scores = [(m.finding.score, 1) for r in results for m in r.matches if m.finding is not None]
    scores += [(s, 0) for r in results for s in r.false_positive_scores]
    if not scores or n_nodules == 0:
        return np.zeros(1), np.zeros(1), np.ones(1)
    arr = np.array(sorted(scores, key=lambda t: -t[0]))
    tps = np.cumsum(arr[:, 1])
    fps = np.cumsum(1 - arr[:, 1])
    return fps / n_scans, tps / n_nodules, arr[:, 0]


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Best sensitivity reached with at most ``rate`` false positives per scan."""
    ok = fps <= rate
    return float(sens[ok].max()) if ok.any() else 0.0


def threshold_at(fps: np.ndarray, thresholds: np.ndarray, rate: float) -> float:
    """The lowest score threshold keeping false positives per scan within ``rate``."""
    ok = fps <= rate
    return float(thresholds[ok].min()) if ok.any() else float("inf")


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarize(results: Sequence[StudyResult]) -> Evaluation:
    """FROC, CPM, operating point at 1 FP/scan, size bands, malignancy AUC, type accuracy."""
    fps, sens, thr = froc_curve(results)
    at = [sensitivity_at(fps, sens, r) for r in FP_RATES]
    t1 = threshold_at(fps, thr, 1.0)
    matches = [m for r in results for m in r.matches]

    def detected(m: Match) -> bool:
        return m.finding is not None and m.finding.score >= t1

    bands = {}
    for lo, hi in SIZE_BANDS:
        band = [m for m in matches if lo <= m.diameter_mm < hi]
        bands[f"{lo:g}-{hi:g} mm"] = {
            "nodules": len(band),
            "sensitivity_1fp": float(np.mean([detected(m) for m in band])) if band else float("nan"),
        }
    big = [m for m in matches if m.diameter_mm >= 6.0]
    found = [m for m in matches if m.finding is not None]
    types = [m for m in found if m.type_index >= 0]
    return Evaluation(
        studies=len(results),
        nodules=len(matches),
        fp_rates=list(FP_RATES),
        sensitivity=at,
        cpm=float(np.mean(at)),
        sensitivity_1fp_6mm_plus=float(np.mean([detected(m) for m in big])) if big else float("nan"),
        threshold_1fp=t1,
        by_size_band=bands,
        malignancy_auc=roc_auc([m.malignant for m in found], [m.finding.malignancy for m in found]),  # type: ignore[union-attr]
        malignancy_pairs=len(found),
        type_accuracy=float(np.mean([NODULE_TYPES[m.type_index] == m.finding.nodule_type for m in types]))  # type: ignore[union-attr]
        if types
        else float("nan"),
        type_n=len(types),
        curve_fps=[float(x) for x in fps],
        curve_sens=[float(x) for x in sens],
    )


def analyze_cohort(
    studies: Iterable[CachedStudy],
    detector: ModelSpec,
    classifier: ModelSpec,
    runner: TorchRunner,
    cfg: AnalysisConfig,
    cohort_dir: Path | None = None,
) -> list[StudyFindings]:
    """Run both models on every study, one at a time (only findings and truth are kept).

    A classifier on a grid of its own crops from each study's HU volume, read again from its
    folder in ``cohort_dir`` (the cache holds the detector's grid only).
    """
    own_grid = not same_grid(detector, classifier)
    if own_grid and cohort_dir is None:
        raise ValueError(
            f"{classifier.name} has a grid of its own: evaluating it needs the cohort's DICOM folder"
        )
    out = []
    for s in studies:
        volume = load_volume(thin_series_files(cohort_dir / s.key)) if own_grid and cohort_dir else None
        out.append(
            StudyFindings(
                analyze(s.preprocessed, detector, classifier, runner, cfg, volume).findings, s.nodules
            )
        )
    return out


def plot_froc(evaluation: Evaluation, path: Path, title: str) -> Path:
    """A FROC curve PNG with the seven LUNA16 operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.step(evaluation.curve_fps, evaluation.curve_sens, where="post", label="FROC")
    ax.plot(evaluation.fp_rates, evaluation.sensitivity, "o", label=f"CPM {evaluation.cpm:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
