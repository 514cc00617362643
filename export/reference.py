"""Reproducing the reference models: cohorts -> cache -> training -> evaluation -> cards.

``make models`` runs :func:`build_reference_models` through ``lungscreen train`` and
``lungscreen evaluate``; every step is seeded, and each output says the weights were trained
on synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from export.checkpoint import Checkpoint
from export.dataset import CachedStudy, cache_cohort, iter_cached, load_cached
from export.evaluate import (
    Evaluation,
    StudyFindings,
    TorchRunner,
    analyze_cohort,
    choose_score_weight,
    plot_froc,
    summarize_at,
)
from export.networks import CLASSIFIER_SPEC, DETECTOR_SPEC
from export.recipe import ReferenceRecipe
from export.spec import SYNTHETIC_DATA_NOTICE
from export.train import mine_candidates, mined_counts, train_classifier, train_detector
from pipeline.analysis import AnalysisConfig

TRAIN_SEED = 1001
EVAL_SEED = 2002  # a different seed: no study of the evaluation cohort is seen in training
# The tuning cohort, neither trained on nor the held-out one: it chooses the pair's score weight
# and report threshold, so the held-out figures are not tuned on themselves.
TUNE_SEED = 3003
# The second training cohort (``ReferenceRecipe.second_train_studies``), for the detector cycles
# with ``second_cohort``.
SECOND_TRAIN_SEED = 4004
Log = Callable[[str], None]


def make_cohort(out: Path, studies: int, seed: int, profile: str, log: Log, workers: int = 1) -> Path:
    """Generate a clean synthetic cohort once (kept when its truth tables exist).

    A kept cohort must be the one asked for: another size, seed or profile (from an older
    recipe) is refused rather than silently trained or evaluated on.
    """
    import pyarrow.parquet as pq

    from synth.cohort import generate_cohort

    if (out / "truth_studies.parquet").exists():
        kept = pq.read_table(out / "truth_studies.parquet", columns=["seed", "profile"]).to_pylist()
        found = (len(kept), {r["seed"] for r in kept}, {r["profile"] for r in kept})
        if found != (studies, {seed}, {profile}):
            raise ValueError(
                f"{out} holds {found[0]} studies (seed {sorted(found[1])}, profile {sorted(found[2])}), "
                f"not the {studies} (seed {seed}, profile {profile}) asked for: remove it to generate "
                "the cohort again."
            )
        return out
    log(f"generating {studies} synthetic studies (seed {seed}, profile {profile}) in {out}")
    summary = generate_cohort(out, studies, seed, profile, workers=workers)
    log(f"generated {summary.studies} studies with {summary.findings} nodules in {summary.seconds:.0f} s")
    return out


def train_reference(
    workdir: Path, recipe: ReferenceRecipe, log: Log = print, detector_from: Path | None = None
) -> tuple[Path, Path]:
    """Train both models; returns the detector and classifier checkpoint paths.

    ``detector_from`` reuses an already trained detector checkpoint (for example one trained on
    a GPU machine) instead of training one; the classifier is always trained here, on the
    candidates that detector finds in the training studies when the recipe mines them.
    """
    studies = _training_studies(workdir, "train", recipe.train_studies, TRAIN_SEED, recipe, log)
    det_path = workdir / f"{DETECTOR_SPEC.name}.pt"
    data = _data_record(recipe, TRAIN_SEED, recipe.train_studies)
    if detector_from is None:
        detector = train_detector(studies, recipe.detector, log)
        detector.training["data"] = data
        second: list[CachedStudy] = []
        for cycle, restart in enumerate(recipe.detector_restarts, 2):
            log(f"detector: warm restart {cycle} from the previous cycle's weights")
            if restart.second_cohort and not second:
                second = _training_studies(
                    workdir, "train2", recipe.second_train_studies, SECOND_TRAIN_SEED, recipe, log
                )
                extra = _data_record(recipe, SECOND_TRAIN_SEED, recipe.second_train_studies)
                data = {**data, "second": extra}
            cycle_studies = [*studies, *second] if restart.second_cohort else studies
            detector = train_detector(cycle_studies, restart, log, start=detector)
            detector.training["data"] = data
        detector.save(det_path)
    else:
        detector = Checkpoint.load(detector_from)
        if detector_from.resolve() != det_path.resolve():
            detector.save(det_path)
        log(f"detector reused from {detector_from}")
    mined = None
    if recipe.mine_candidates:
        mining = AnalysisConfig(max_candidates=recipe.mining_max_candidates)
        mined = mine_candidates(studies, detector, mining, log=log)
        log(f"detector candidates in the training studies: {mined_counts(mined)}")
    classifier = train_classifier(studies, recipe.classifier, log, mined)
    classifier.training["data"] = data
    cls_path = classifier.save(workdir / f"{CLASSIFIER_SPEC.name}.pt")
    return det_path, cls_path


def evaluate_reference(
    detector_path: Path,
    classifier_path: Path,
    workdir: Path,
    recipe: ReferenceRecipe,
    cfg: AnalysisConfig,
    log: Log = print,
    score_weight: float | None = None,
) -> Evaluation:
    """Evaluate both checkpoints on the held-out cohort; writes evaluation.json and froc.png.

    Without ``score_weight`` the weight (and the report threshold) is first chosen on the tuning
    cohort and recorded in the evaluation's ``tuning``.
    """
    detector, classifier = Checkpoint.load(detector_path), Checkpoint.load(classifier_path)
    runner = TorchRunner({DETECTOR_SPEC.name: detector.build(), CLASSIFIER_SPEC.name: classifier.build()})

    def findings(name: str, studies: int, seed: int) -> list[StudyFindings]:
        profile, workers = recipe.eval_profile, recipe.workers
        cohort = make_cohort(workdir / f"{name}-cohort", studies, seed, profile, log, workers)
        paths = cache_cohort(cohort, workdir / f"{name}-cache", detector.spec, workers)
        return analyze_cohort(iter_cached(paths), detector.spec, classifier.spec, runner, cfg, cohort)

    tuning = None
    if score_weight is None:
        tuning = choose_score_weight(findings("tune", recipe.tune_studies, TUNE_SEED), seed=TUNE_SEED)
        score_weight = tuning.score_weight
        by_weight = ", ".join(f"{w}: {cpm:.3f}" for w, cpm in tuning.cpm_by_weight.items())
        log(f"tuning cohort: score weight {score_weight:g} (CPM by weight {by_weight}), "
            f"report threshold {tuning.report_threshold:.3f}")  # fmt: skip
    result = summarize_at(findings("eval", recipe.eval_studies, EVAL_SEED), score_weight)
    result.tuning = tuning
    (workdir / "evaluation.json").write_text(result.to_json())
    plot_froc(
        result, workdir / "froc.png", f"{DETECTOR_SPEC.name}: held-out synthetic cohort (seed {EVAL_SEED})"
    )
    log(f"CPM {result.cpm:.3f}, sensitivity at 1 FP/scan (>= 6 mm) {result.sensitivity_1fp_6mm_plus:.3f}, "
        f"malignancy AUC {result.malignancy_auc:.3f}, type accuracy {result.type_accuracy:.3f}")  # fmt: skip
    return result


def _training_studies(
    workdir: Path, name: str, studies: int, seed: int, recipe: ReferenceRecipe, log: Log
) -> list[CachedStudy]:
    """Generate (once), cache and load one training cohort."""
    profile, workers = recipe.train_profile, recipe.workers
    cohort = make_cohort(workdir / f"{name}-cohort", studies, seed, profile, log, workers)
    loaded = [load_cached(p) for p in cache_cohort(cohort, workdir / f"{name}-cache", DETECTOR_SPEC, workers)]
    log(f"{name}: {len(loaded)} studies, {sum(len(s.nodules) for s in loaded)} nodules")
    return loaded


def _data_record(recipe: ReferenceRecipe, seed: int, studies: int) -> dict[str, object]:
    return {"generator": "synth", "profile": recipe.train_profile, "seed": seed, "studies": studies,
            "notice": SYNTHETIC_DATA_NOTICE}  # fmt: skip


def write_model_cards(
    repository: Path, evaluation: Evaluation, checkpoints: Path, workdir: Path, command: str
) -> list[Path]:
    """Write both model cards (and the FROC PNG beside the detector's) from measured figures.

    ``checkpoints`` holds the two checkpoints measured, ``workdir`` the evaluation's FROC PNG.
    """
    import shutil

    from export.cards import classifier_card, detector_card

    written = []
    det_dir = repository / DETECTOR_SPEC.name
    det_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workdir / "froc.png", det_dir / "froc.png")
    det_ckpt = Checkpoint.load(checkpoints / f"{DETECTOR_SPEC.name}.pt")
    cls_ckpt = Checkpoint.load(checkpoints / f"{CLASSIFIER_SPEC.name}.pt")
    for model_dir, text in (
        (det_dir, detector_card(evaluation, det_ckpt, command)),
        (repository / CLASSIFIER_SPEC.name, classifier_card(evaluation, cls_ckpt, command)),
    ):
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "README.md").write_text(text)
        written.append(model_dir / "README.md")
    (det_dir / "evaluation.json").write_text(evaluation.to_json())
    return written
