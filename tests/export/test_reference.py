"""The reference recipe's cohorts and caches: made once, never silently swapped for another recipe's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from export.dataset import cache_cohort, iter_cached, load_cached, thin_series_files
from export.evaluate import TorchRunner, analyze_cohort
from export.networks import CLASSIFIER_SPEC, DETECTOR_SPEC
from export.reference import make_cohort
from pipeline.analysis import AnalysisConfig
from pipeline.postprocess import ras_to_lps
from pipeline.preprocess import crop_at
from pipeline.volume import load_volume


def test_a_kept_cohort_is_reused_only_when_it_is_the_one_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    logged: list[str] = []
    make_cohort(out, 1, 7, "small", logged.append)
    assert pq.read_table(out / "truth_studies.parquet").num_rows == 1
    stamp = (out / "truth_studies.parquet").stat().st_mtime_ns
    assert make_cohort(out, 1, 7, "small", logged.append) == out
    assert (out / "truth_studies.parquet").stat().st_mtime_ns == stamp  # not generated again
    for studies, seed in ((2, 7), (1, 8)):
        with pytest.raises(ValueError, match="remove it"):
            make_cohort(out, studies, seed, "small", logged.append)


def test_a_cached_study_is_redone_when_its_cohort_was_generated_again(tmp_path: Path) -> None:
    cohort, cache = tmp_path / "cohort", tmp_path / "cache"
    make_cohort(cohort, 1, 7, "small", print)
    (path,) = cache_cohort(cohort, cache, DETECTOR_SPEC)
    stamp = path.stat().st_mtime_ns
    assert cache_cohort(cohort, cache, DETECTOR_SPEC) == [path]
    assert path.stat().st_mtime_ns == stamp  # same study: reused
    shutil.rmtree(cohort)
    make_cohort(cohort, 1, 8, "small", print)  # same folder names, another patient
    assert cache_cohort(cohort, cache, DETECTOR_SPEC) == [path]
    assert path.stat().st_mtime_ns != stamp


def test_a_cached_study_is_redone_when_its_truth_changed(tmp_path: Path) -> None:
    cohort, cache = tmp_path / "cohort", tmp_path / "cache"
    make_cohort(cohort, 1, 7, "small", print)
    (path,) = cache_cohort(cohort, cache, DETECTOR_SPEC)
    stamp = path.stat().st_mtime_ns
    truth = pq.read_table(cohort / "truth.parquet")
    assert truth.num_rows > 0
    pq.write_table(truth.slice(0, 0), cohort / "truth.parquet")  # a fixed generator dropped its nodules
    assert cache_cohort(cohort, cache, DETECTOR_SPEC) == [path]
    assert path.stat().st_mtime_ns != stamp
    assert load_cached(path).nodules == ()


def test_a_cached_study_is_redone_for_a_model_on_another_grid(tmp_path: Path) -> None:
    cohort, cache = tmp_path / "cohort", tmp_path / "cache"
    make_cohort(cohort, 1, 7, "small", print)
    (path,) = cache_cohort(cohort, cache, DETECTOR_SPEC)
    coarse = load_cached(path)
    finer = DETECTOR_SPEC.model_copy(update={"target_spacing_mm": (1.0, 1.0, 1.0)})
    assert cache_cohort(cohort, cache, finer) == [path]
    fine = load_cached(path)
    assert fine.spacing == (1.0, 1.0, 1.0) and coarse.spacing == DETECTOR_SPEC.target_spacing_mm
    assert all(f > c for f, c in zip(fine.image.shape, coarse.image.shape, strict=True))


def test_train_options_reach_every_stage_of_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from export.recipe import ReferenceRecipe
    from pipeline.cli import app

    seen: list[ReferenceRecipe] = []

    def capture(
        workdir: Path, recipe: ReferenceRecipe, log: object, detector_from: object
    ) -> tuple[Path, Path]:
        seen.append(recipe)
        return workdir / "d.pt", workdir / "c.pt"

    monkeypatch.setattr("export.reference.train_reference", capture)
    args = ["train", "--workdir", str(tmp_path), "--restarts", "3", "--restart-steps", "5"]
    args += ["--precision", "bf16"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--restarts", "0"]).exit_code == 0
    restarted, single = seen
    assert [cfg.steps for cfg in restarted.detector_restarts] == [5, 5, 5]
    seeds = [cfg.seed for cfg in (restarted.detector, *restarted.detector_restarts)]
    assert len(set(seeds)) == len(seeds), "a restart must not replay another cycle's batches"
    stages = (restarted.detector, *restarted.detector_restarts, restarted.classifier)
    assert {cfg.precision for cfg in stages} == {"bf16"}
    assert single.detector_restarts == ()
    assert single.detector.precision == ReferenceRecipe().detector.precision  # the recipe's own


def test_a_card_lists_every_training_cycle_in_the_order_they_ran() -> None:
    from export.cards import detector_card
    from export.checkpoint import Checkpoint
    from export.evaluate import Evaluation

    first = {"config": {"steps": 2400, "learning_rate": 0.002, "seed": 0}, "precision": "fp32"}
    second = {
        "config": {
            "steps": 3000,
            "learning_rate": 0.001,
            "seed": 7,
            "pleural_paste_fraction": 0.5,
            "balanced_dice": True,
            "hard_positive_fraction": 0.25,
            "second_cohort": True,
        },
        "precision": "bf16",
        "previous": first,
    }
    data = {"studies": 144, "seed": 1001, "second": {"studies": 144, "seed": 4004}}
    ckpt = Checkpoint("m:f", {}, {}, DETECTOR_SPEC, {**second, "data": data})
    ev = Evaluation(1, 1, [1.0], [0.5], 0.5, 0.5, 0.5)
    card = detector_card(ev, ckpt, "lungscreen evaluate")
    assert "- Cycle 1: 2400 steps, learning rate 0.002, seed 0, fp32, 0 s" in card  # no pleural pastes
    assert (
        "- Cycle 2: 3000 steps, learning rate 0.001, seed 7, bf16, 50% of pastes against the pleura, "
        "nodule-balanced Dice, 25% of nodule patches on the nodules its start finds weakest, "
        "on both training cohorts" in card
    )
    assert "seed 1001); the cycles on both training cohorts add 144 more (seed 4004)." in card
    assert card.index("Cycle 1") < card.index("Cycle 2")


def test_evaluate_tunes_the_score_weight_unless_one_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from export.evaluate import Evaluation
    from pipeline.cli import app

    asked: list[object] = []

    def capture(*args: object) -> Evaluation:
        asked.append(args[-1])
        return Evaluation(1, 1, [1.0], [0.5], 0.5, 0.5, 0.5)

    monkeypatch.setattr("export.reference.evaluate_reference", capture)
    base = ["evaluate", "--workdir", str(tmp_path), "--no-cards"]
    assert CliRunner().invoke(app, base).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--score-weight", "0.6"]).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--score-weight", "1.5"]).exit_code != 0
    assert asked == [None, 0.6]


def test_evaluate_reads_the_checkpoints_from_their_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from export.evaluate import Evaluation
    from pipeline.cli import app

    read: list[object] = []

    def capture(detector: Path, classifier: Path, workdir: Path, *rest: object) -> Evaluation:
        read.append((detector, classifier, workdir))
        return Evaluation(1, 1, [1.0], [0.5], 0.5, 0.5, 0.5)

    monkeypatch.setattr("export.reference.evaluate_reference", capture)
    base = ["evaluate", "--workdir", str(tmp_path / "work"), "--no-cards"]
    assert CliRunner().invoke(app, base).exit_code == 0
    assert CliRunner().invoke(app, [*base, "--checkpoints", str(tmp_path / "ckpt")]).exit_code == 0
    work, ckpt = tmp_path / "work", tmp_path / "ckpt"
    assert read == [
        (work / "lung_nodule_detector.pt", work / "lung_nodule_classifier.pt", work),
        (ckpt / "lung_nodule_detector.pt", ckpt / "lung_nodule_classifier.pt", work),
    ]


def test_the_card_says_where_the_score_weight_came_from() -> None:
    from export.cards import detector_card
    from export.checkpoint import Checkpoint
    from export.evaluate import Evaluation, OperatingPoint

    ckpt = Checkpoint("m:f", {}, {}, DETECTOR_SPEC, {"config": {"steps": 1}})
    tuned = OperatingPoint(0.6, 0.71, {"0.5": 0.70, "0.6": 0.74}, 24, 38, 3003)
    card = detector_card(
        Evaluation(1, 1, [1.0], [0.5], 0.5, 0.5, 0.5, score_weight=0.6, tuning=tuned), ckpt, "c"
    )
    assert "sigmoid(0.6 logit(detector peak probability) + 0.4 logit(classifier nodule" in card
    assert "tuning cohort (24 studies, 38 nodules,\nseed 3003" in card
    assert "0.6: 0.740" in card and "point there, 0.7100" in card
    given = detector_card(Evaluation(1, 1, [1.0], [0.5], 0.5, 0.5, 0.5, score_weight=1.0), ckpt, "c")
    assert "+ 0 logit(classifier nodule probability)) (weight given" in given


def test_only_the_cycles_marked_so_train_on_the_second_cohort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import reference
    from export.recipe import ReferenceRecipe, TrainConfig

    class Trained:
        def __init__(self) -> None:
            self.training: dict[str, Any] = {}

        def save(self, path: Path) -> Path:
            return path

    studies_per_cycle: list[int] = []
    detectors: list[Trained] = []

    def fake_train(studies: list[object], cfg: TrainConfig, log: object, start: object = None) -> Trained:
        studies_per_cycle.append(len(studies))
        detectors.append(Trained())
        return detectors[-1]

    monkeypatch.setattr(reference, "train_detector", fake_train)
    monkeypatch.setattr(reference, "train_classifier", lambda *a: Trained())
    recipe = ReferenceRecipe(
        train_studies=1,
        second_train_studies=2,
        train_profile="small",
        detector_restarts=(TrainConfig(), TrainConfig(second_cohort=True), TrainConfig(second_cohort=True)),
        mine_candidates=False,
    )
    reference.train_reference(tmp_path, recipe, print)
    assert studies_per_cycle == [1, 1, 3, 3]
    assert "second" not in detectors[1].training["data"]
    assert detectors[-1].training["data"]["second"]["seed"] == reference.SECOND_TRAIN_SEED
    seeds = pq.read_table(tmp_path / "train2-cohort" / "truth_studies.parquet", columns=["seed"])
    assert set(seeds.column("seed").to_pylist()) == {reference.SECOND_TRAIN_SEED}


class _DenseDetector(torch.nn.Module):
    """Fires on everything denser than soft tissue's lower edge (vessels, nodules)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x - 0.55)


class _RecordingClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.crops: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.crops.extend(x[:, 0].numpy().copy())
        return torch.zeros((x.shape[0], 6))


def test_a_classifier_on_its_own_grid_is_evaluated_on_crops_from_the_cohorts_dicom(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "cohort", 1, 7, "small", print)
    paths = cache_cohort(cohort, tmp_path / "cache", DETECTOR_SPEC)
    fine = CLASSIFIER_SPEC.model_copy(update={"target_spacing_mm": (1.0, 1.0, 1.0), "test_time_flips": ()})
    detector = DETECTOR_SPEC.model_copy(update={"test_time_flips": ()})
    classifier = _RecordingClassifier()
    runner = TorchRunner({detector.name: _DenseDetector(), fine.name: classifier})
    with pytest.raises(ValueError, match="DICOM folder"):
        analyze_cohort(iter_cached(paths), detector, fine, runner, AnalysisConfig())
    (study,) = analyze_cohort(iter_cached(paths), detector, fine, runner, AnalysisConfig(), cohort)
    assert study.findings and len(classifier.crops) == len(study.findings)
    volume = load_volume(thin_series_files(cohort / paths[0].stem))
    expected = [crop_at(volume, ras_to_lps(np.asarray(f.center_lps_mm)), fine) for f in study.findings]
    for crop in classifier.crops:
        assert min(float(np.abs(crop - e).max()) for e in expected) < 1e-4
