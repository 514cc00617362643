"""Model cards (``model_repository/<model>/README.md``) written from measured figures only."""

from __future__ import annotations

import math
from typing import Any

from export.checkpoint import Checkpoint
from export.evaluate import Evaluation
from export.spec import SYNTHETIC_DATA_NOTICE, ModelSpec, ModelTask

GOALS = {"cpm": 0.90, "sens_1fp_6mm": 0.95, "malignancy_auc": 0.90}


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _verdict(value: float, goal: float) -> str:
    if value is None or math.isnan(value):
        return "not measurable"
    return "met" if value >= goal else "**not met**"


def _reproduce(command: str) -> str:
    # One seeded CPU run of the recipe differs from another (data order, the cohort's nodules)
    # by more than most recipe changes measured so far: say so rather than promise equal figures.
    return (
        f"Measure these weights: `{command}`.\n"
        "Retrain: `make models` runs the same seeded recipe; a retrain on other training data or\n"
        "code gives figures of its own, not these (see [export/README.md](../../export/README.md),\n"
        '"Where the detector falls short").'
    )


def _cycle(t: dict[str, Any]) -> str:
    cfg = t.get("config", {})
    precision = t.get("precision")  # not recorded by checkpoints older than the option
    return ", ".join(
        [
            f"{cfg.get('steps', '?')} steps",
            f"learning rate {cfg.get('learning_rate', '?')}",
            f"seed {cfg.get('seed', '?')}",
            *([precision] if precision else []),
            *(
                [f"{cfg['pleural_paste_fraction']:.0%} of pastes against the pleura"]
                if cfg.get("pleural_paste_fraction")
                else []
            ),
            *(["nodule-balanced Dice"] if cfg.get("balanced_dice") else []),
            *(
                [f"{hard:.0%} of nodule patches on the nodules its start finds weakest"]
                if (hard := cfg.get("hard_positive_fraction"))
                else []
            ),
            *(["on both training cohorts"] if cfg.get("second_cohort") else []),
            f"{t.get('train_seconds', 0):.0f} s on {t.get('device', 'cpu')}",
            f"code `{t.get('code_version', 'unknown')}`",
        ]
    )


def _operating_point(ev: Evaluation) -> str:
    w = ev.score_weight
    score = (
        f"score = sigmoid({w:g} logit(detector peak probability) + {1 - w:g} logit(classifier nodule "
        "probability))"
    )
    if ev.tuning is None:
        return f"{score} (weight given to the evaluation)."
    t = ev.tuning
    tried = ", ".join(f"{k}: {v:.3f}" for k, v in t.cpm_by_weight.items())
    return (
        f"{score}. The weight was chosen on a tuning cohort ({t.studies} studies, {t.nodules} nodules,\n"
        f"seed {t.seed}; neither trained on nor this one) by its CPM (by weight: {tried}); the report\n"
        f"threshold is its 1 FP/scan point there, {t.report_threshold:.4f} (here: {ev.threshold_1fp:.4f});\n"
        "the job's default (`triage.report_threshold`) is that point rounded down to 3 decimals."
    )


def _training(ckpt: Checkpoint) -> str:
    t = ckpt.training
    data = t.get("data", {})
    cycles = [t]
    while "previous" in cycles[0]:  # warm restarts: list the cycles in the order they ran
        cycles.insert(0, cycles[0]["previous"])
    steps = "\n".join(f"- Cycle {i}: {_cycle(c)}." for i, c in enumerate(cycles, 1))
    second = data.get("second")
    also = (
        f"; the cycles on both training cohorts add {second.get('studies', '?')} more (seed "
        f"{second.get('seed', '?')})"
        if second
        else ""
    )
    return (
        f"- Data: {data.get('studies', '?')} synthetic studies from `synth` (profile "
        f"`{data.get('profile', '?')}`, seed {data.get('seed', '?')}){also}.\n"
        f"{steps}\n"
        f"- Network: `{ckpt.factory}` with `{ckpt.kwargs}`."
    )


def _mirroring(spec: ModelSpec) -> str:
    if not spec.test_time_flips:
        return ""
    copies = ", ".join(
        f"flipped along axis {'+'.join(map(str, axes))}" if axes else "as is" for axes in spec.test_time_flips
    )
    passes = len(spec.test_time_flips)
    unit = "patch" if spec.task is ModelTask.NODULE_SEGMENTATION else "crop"
    return f"- test-time mirroring: logits averaged over {passes} passes per {unit} ({copies})\n"


def _header(ckpt: Checkpoint, what: str) -> str:
    spec = ckpt.spec
    return f"""# {spec.name}

> **{SYNTHETIC_DATA_NOTICE}**

{what}

## Intended use
Research and engineering: exercising the lungscreen platform end to end (export, Triton serving,
the screening job, triage) on synthetic chest CT. Not validated on patient data; it must not
inform any clinical decision.

## Input contract (travels in the Triton config as `lungscreen_spec`)
- spacing {spec.target_spacing_mm} mm, orientation {spec.orientation}, HU window {spec.hu_window}
  scaled to 0..1, patch {spec.patch_size}, overlap {spec.overlap}
- inputs: {", ".join(f"`{t.name}` {t.shape} ({t.meaning})" for t in spec.inputs)}
- outputs: {", ".join(f"`{t.name}` {t.shape} ({t.meaning})" for t in spec.outputs)}
{_mirroring(spec)}"""


def detector_card(ev: Evaluation, ckpt: Checkpoint, command: str) -> str:
    """The detector's card: FROC, CPM and size bands on the held-out cohort."""
    rows = "\n".join(f"| {r:g} | {_fmt(s)} |" for r, s in zip(ev.fp_rates, ev.sensitivity, strict=True))
    bands = "\n".join(
        f"| {band} | {v['nodules']:.0f} | {_fmt(v['sensitivity_1fp'])} |"
        for band, v in ev.by_size_band.items()
    )
    return (
        _header(
            ckpt,
            "3D nodule segmentation network; candidates are connected components of its "
            "stitched probability map, confirmed by `lung_nodule_classifier`.",
        )
        + f"""
## Evaluation (held-out synthetic cohort, measured by `lungscreen evaluate`)
{ev.studies} studies, {ev.nodules} nodules, generated with a seed never used in training.
Detection scored the LUNA16 way: a candidate is a hit when its centre lies within the
nodule's radius; {_operating_point(ev)}

| false positives per scan | sensitivity |
| --- | --- |
{rows}

- CPM (mean of the seven): **{_fmt(ev.cpm)}** (goal >= {GOALS["cpm"]}: {_verdict(ev.cpm, GOALS["cpm"])})
- Sensitivity at 1 FP/scan for nodules >= 6 mm: **{_fmt(ev.sensitivity_1fp_6mm_plus)}**
  (goal >= {GOALS["sens_1fp_6mm"]}: {_verdict(ev.sensitivity_1fp_6mm_plus, GOALS["sens_1fp_6mm"])})

| size band | nodules | sensitivity at 1 FP/scan |
| --- | --- | --- |
{bands}

![FROC](froc.png)

{_reproduce(command)}

## Training
{_training(ckpt)}
"""
    )


def classifier_card(ev: Evaluation, ckpt: Checkpoint, command: str) -> str:
    """The classifier's card: malignancy AUC and type accuracy on detected nodules."""
    return (
        _header(
            ckpt,
            "3D CNN on a crop around each candidate: nodule vs not, malignancy probability "
            "(the synthetic rule's score as target) and nodule type.",
        )
        + f"""
## Evaluation (held-out synthetic cohort, measured by `lungscreen evaluate`)
On the {ev.malignancy_pairs} truth nodules the detector found (best-scoring hit each):

- Malignancy ROC AUC: **{_fmt(ev.malignancy_auc)}** (goal >= {GOALS["malignancy_auc"]}:
  {_verdict(ev.malignancy_auc, GOALS["malignancy_auc"])}). The label is the documented synthetic
  rule of `synth/README.md`, not pathology.
- Nodule-type accuracy (solid, part-solid, ground-glass, calcified): **{_fmt(ev.type_accuracy)}**
  on {ev.type_n} nodules.

{_reproduce(command)}

## Training
{_training(ckpt)}
"""
    )
