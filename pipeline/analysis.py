"""One preprocessed study through both models: detector patches, candidates, classifier crops.

The models are reached through a :class:`ModelRunner`: Triton in the screening job,
ONNX Runtime or PyTorch in evaluation and the baseline, so every path measures the same
post-processing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from export.networks import CLASSIFIER_SLOTS
from export.spec import ModelSpec
from pipeline.patches import flip_averaged, plan_patches, sliding_window
from pipeline.postprocess import Candidate, crop_around, extract_candidates, ras_to_lps
from pipeline.preprocess import Preprocessed, crop_at, lung_box, lung_region, same_grid
from pipeline.volume import Volume


class ModelRunner(Protocol):
    """Runs batches through a named model; may run them concurrently."""

    def run_many(self, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:
        """One output array per input batch, in order."""
        ...


# Detector probability above which connected voxels form a candidate. `lungscreen evaluate`
# measures the model cards' figures at this same value, so they describe what the job does.
CANDIDATE_THRESHOLD = 0.5
# A finding's score mixes the detector's peak and the classifier's nodule probability in log-odds
# (:func:`finding_score`), detector weight w. The weight belongs to the pair of models:
# `lungscreen evaluate` chooses it on the tuning cohort, and this default is the committed pair's
# (model_repository/lung_nodule_detector/evaluation.json, tests/job/test_triage.py checks it).
DETECTOR_SCORE_WEIGHT = 0.7
# Probabilities are clipped this far from 0 and 1 before their log-odds: float32 sigmoids reach
# exactly 1.0 (the served detector's peak on half of the nodules it finds).
_SCORE_EPS = 1e-7


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of the per-study analysis (validated in ``pipeline.config``)."""

    candidate_threshold: float = CANDIDATE_THRESHOLD
    max_candidates: int = 32
    detector_batch: int = 4
    classifier_batch: int = 8
    in_flight: int = 4
    lung_gate: bool = True
    detector_score_weight: float = DETECTOR_SCORE_WEIGHT


@dataclass(frozen=True)
class Finding:
    """One classified candidate, measured in patient (DICOM LPS) millimetres."""

    center_lps_mm: tuple[float, float, float]
    diameter_mm: float
    solid_diameter_mm: float
    volume_mm3: float
    detector_score: float
    nodule_probability: float
    score: float
    malignancy: float
    nodule_type: str
    type_probability: float
    region: str


@dataclass
class Analysis:
    """Findings of a study (all candidates, best first) and how long each part took."""

    findings: list[Finding]
    patches: int
    timings: dict[str, float] = field(default_factory=dict)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, _SCORE_EPS), 1.0 - _SCORE_EPS)
    return math.log(p / (1.0 - p))


def finding_score(detector_score: float, nodule_probability: float, weight: float) -> float:
    """A finding's ranking score: sigmoid(w logit(detector peak) + (1 - w) logit(nodule probability)).

    Log-odds, not a weighted geometric mean of the probabilities: the nodule-balanced detector's
    peaks crowd below 1 (0.99 to 0.9999999 among the most certain), where their logarithms are
    all near 0 and any classifier weight would override them; their log-odds keep that order.
    ``weight`` 1 ranks by the detector alone, 0 by the classifier alone.
    """
    mixed = weight * _logit(detector_score) + (1.0 - weight) * _logit(nodule_probability)
    return float(_sigmoid(np.float64(mixed)))


def region_of(center_ijk: Sequence[float], box: tuple[slice, slice, slice]) -> str:
    """Coarse lung region from the position inside the lung box (RAS axes): side and third."""
    i, _, k = center_ijk
    mid_i = (box[0].start + box[0].stop) / 2.0
    side = "right" if i < mid_i else "left"  # +i points to patient Left in RAS
    height = (k - box[2].start) / max(box[2].stop - box[2].start, 1)
    third = "lower" if height < 1 / 3 else ("middle" if height < 2 / 3 else "upper")
    if side == "left" and third == "middle":
        third = "lingula/mid"
    return f"{side} {third} lung zone"


def analyze(
    pre: Preprocessed,
    detector: ModelSpec,
    classifier: ModelSpec,
    runner: ModelRunner,
    cfg: AnalysisConfig = AnalysisConfig(),
    volume: Volume | None = None,
) -> Analysis:
    """Detect, measure and classify nodule candidates in one preprocessed study.

    ``pre`` is the study preprocessed for the detector. A classifier whose spec preprocesses
    otherwise (:func:`~pipeline.preprocess.same_grid`) needs the HU ``volume`` too: its crops
    are then resampled from it on the classifier's own grid.
    """
    if volume is None and not same_grid(detector, classifier):
        raise ValueError(
            f"{classifier.name} preprocesses otherwise than {detector.name} (spacing, orientation or "
            "HU window): its crops need the study's HU volume"
        )
    box = lung_box(pre, detector)
    candidates, patches, timings = detect(pre, detector, runner, cfg, box)
    t2 = time.perf_counter()
    findings = classify(pre, candidates, classifier, runner, cfg, box, volume)
    timings["classify"] = time.perf_counter() - t2
    findings.sort(key=lambda f: f.score, reverse=True)
    return Analysis(findings, patches, timings)


def detect(
    pre: Preprocessed,
    detector: ModelSpec,
    runner: ModelRunner,
    cfg: AnalysisConfig,
    box: tuple[slice, slice, slice],
) -> tuple[list[Candidate], int, dict[str, float]]:
    """The detector over the lung box (mirrored as its spec says), stitched, gated to the lungs
    and cut into candidates.

    Returns the candidates, the number of patches and the seconds of each part.
    """
    t0 = time.perf_counter()
    grid = plan_patches(pre.array.shape, detector.patch_size, detector.overlap, box)
    probs = sliding_window(
        pre.array,
        grid,
        flip_averaged(lambda batches: runner.run_many(detector.name, batches), detector.test_time_flips),
        cfg.detector_batch,
        cfg.in_flight,
    )
    t1 = time.perf_counter()
    if cfg.lung_gate:
        probs *= lung_region(pre, detector)
    candidates = extract_candidates(
        probs, pre, detector, threshold=cfg.candidate_threshold, max_candidates=cfg.max_candidates
    )
    return candidates, len(grid.windows), {"detect": t1 - t0, "candidates": time.perf_counter() - t1}


def classify(
    pre: Preprocessed,
    candidates: Sequence[Candidate],
    classifier: ModelSpec,
    runner: ModelRunner,
    cfg: AnalysisConfig,
    box: tuple[slice, slice, slice],
    volume: Volume | None = None,
) -> list[Finding]:
    """Crops around candidates through the classifier, turned into findings.

    The crops come from ``pre`` (the detector's grid, which must then be the classifier's too),
    or resampled from the HU ``volume`` on the classifier's own grid when it is given.
    """
    if not candidates:
        return []
    if volume is None:
        images = [crop_around(pre.array, c.center_ijk, classifier.patch_size) for c in candidates]
    else:
        images = [crop_at(volume, c.center_ras(pre), classifier) for c in candidates]
    crops = np.stack(images)[:, None]
    batches = [crops[i : i + cfg.classifier_batch] for i in range(0, len(crops), cfg.classifier_batch)]
    classify_many = flip_averaged(
        lambda b: runner.run_many(classifier.name, b), classifier.test_time_flips, spatial_output=False
    )
    scores = np.concatenate(classify_many(batches))
    types = classifier.classes
    findings = []
    for cand, s in zip(candidates, scores, strict=True):
        p_nodule = float(_sigmoid(s[CLASSIFIER_SLOTS["nodule"]]))
        type_logits = s[CLASSIFIER_SLOTS["type"]]
        type_p = np.exp(type_logits - type_logits.max())
        type_p /= type_p.sum()
        center = ras_to_lps(cand.center_ras(pre))
        findings.append(
            Finding(
                center_lps_mm=tuple(float(c) for c in center),
                diameter_mm=cand.diameter_mm,
                solid_diameter_mm=cand.solid_diameter_mm,
                volume_mm3=cand.volume_mm3,
                detector_score=cand.score,
                nodule_probability=p_nodule,
                score=finding_score(cand.score, p_nodule, cfg.detector_score_weight),
                malignancy=float(_sigmoid(s[CLASSIFIER_SLOTS["malignancy"]])),
                nodule_type=types[int(type_p.argmax())],
                type_probability=float(type_p.max()),
                region=region_of(cand.center_ijk, box),
            )
        )
    return findings
