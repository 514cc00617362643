"""Training pieces: labels, nodule-balanced weights, patch sampling, the output prior, devices."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest
import torch
from scipy import ndimage

from export.checkpoint import Checkpoint, build_module
from export.dataset import CachedStudy, TruthNodule
from export.networks import DETECTOR_FACTORY, DETECTOR_KWARGS
from export.train import (
    DetectorPatches,
    MinedCandidate,
    TrainConfig,
    classifier_samples,
    detector_loss,
    effective_precision,
    init_output_prior,
    mine_candidates,
    mined_counts,
    native_bf16,
    nodule_bank,
    nodule_index_volume,
    nodule_peaks,
    nodule_voxel_weight,
    paste_nodule,
    reuse_freed_memory,
    train_detector,
)
from pipeline.serving import PROJECT_ROOT

SPACING = (1.5, 1.5, 1.5)
SOFT, LUNG, AIR = 0.7, 0.1, 0.0  # 0..1 levels of the -1000..400 HU window


def toy_study(diameters: tuple[float, ...] = (4.5, 15.0)) -> CachedStudy:
    """A box body with two air-filled lungs and solid nodules in the right one."""
    image = np.full((80, 64, 64), AIR, dtype=np.float32)
    image[4:76, 4:60, 4:60] = SOFT
    image[10:38, 12:52, 10:54] = LUNG
    image[42:70, 12:52, 10:54] = LUNG
    rng = np.random.default_rng(0)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    nodules = []
    for k, d in enumerate(diameters):
        center = (24.0, 22.0 + 18.0 * k, 32.0)
        grid = np.indices(image.shape).astype(np.float32)
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, SPACING, strict=True)))
        image[dist <= d / 2] = SOFT
        lps = tuple(c * s for c, s in zip(center, SPACING, strict=True))
        nodules.append(TruthNodule(center, lps, d, 0, d > 10, 0.8 if d > 10 else 0.1))  # type: ignore[arg-type]
    affine = np.diag([*SPACING, 1.0])
    box = (slice(8, 72), slice(10, 54), slice(8, 56))
    return CachedStudy("toy", image, affine, SPACING, box, tuple(nodules))


def test_index_volume_marks_each_nodule_with_its_number() -> None:
    study = toy_study()
    index = nodule_index_volume(study.image.shape, study)
    for k, nod in enumerate(study.nodules):
        assert index[tuple(int(c) for c in nod.center_ijk)] == k + 1
        voxels = int((index == k + 1).sum())
        sphere = math.pi / 6 * nod.diameter_mm**3 / np.prod(SPACING)
        assert 0.6 * sphere < voxels < 1.6 * sphere
    assert index[0, 0, 0] == 0


def test_small_nodules_weigh_as_much_as_large_ones_up_to_the_cap() -> None:
    cfg = TrainConfig(balance_diameter_mm=12.0, max_voxel_weight=50.0)
    per_voxel = {d: nodule_voxel_weight(math.pi / 6 * d**3 / 3.375, SPACING, cfg) for d in (3, 5, 8, 12, 25)}
    assert per_voxel[25] == per_voxel[12] == 1.0  # never below plain BCE
    assert per_voxel[3] == 50.0  # capped
    assert per_voxel[5] > per_voxel[8] > per_voxel[12]
    total = {d: w * math.pi / 6 * d**3 / 3.375 for d, w in per_voxel.items()}
    assert total[5] == pytest.approx(total[8]) == pytest.approx(total[12])


def test_patches_are_balanced_and_weighted() -> None:
    cfg = TrainConfig(patch=(32, 32, 32), batch=24, positive_fraction=0.5, paste_probability=0.0)
    patches = DetectorPatches([toy_study()], cfg, np.random.default_rng(0))
    image, label, weight = patches.batch(np.random.default_rng(1))
    assert image.shape == label.shape == weight.shape == (24, 1, 32, 32, 32)
    with_nodule = label.flatten(1).amax(1) > 0
    assert 4 <= int(with_nodule.sum()) <= 20
    assert torch.all(weight[label == 0] == 1.0)
    assert weight[label == 1].max() > 5.0  # the 4.5 mm nodule's voxels
    # positives are drawn per nodule, not per voxel: the small one shows up about as often
    small = (weight == weight.max()).flatten(1).any(1)
    assert int(small.sum()) >= 2


def test_pasting_puts_nodules_into_negative_patches() -> None:
    cfg = TrainConfig(patch=(32, 32, 32), batch=16, positive_fraction=0.0, paste_probability=1.0)
    patches = DetectorPatches([toy_study()], cfg, np.random.default_rng(0))
    _, label, _ = patches.batch(np.random.default_rng(2))
    assert int((label.flatten(1).amax(1) > 0).sum()) >= 8


def test_pleural_pastes_abut_the_lung_edge_and_leave_the_wall_alone() -> None:
    study = toy_study()
    big = next(b for b in nodule_bank([study]) if b.diameter_mm == 15.0)
    lungs = np.zeros(study.image.shape, dtype=bool)
    lungs[10:38, 12:52, 10:54] = lungs[42:70, 12:52, 10:54] = True  # the toy's lungs, nodules included
    depth = ndimage.distance_transform_edt(lungs, sampling=SPACING)
    rng = np.random.default_rng(3)
    pleural, plain = [], []
    for _ in range(12):
        image = study.image.copy()
        center = paste_nodule(image, None, big, rng, lungs=lungs)
        assert center is not None
        pleural.append(depth[center])
        assert np.array_equal(image[~lungs], study.image[~lungs])  # the chest wall is not raised
        center = paste_nodule(study.image.copy(), None, big, rng)
        assert center is not None
        plain.append(depth[center])
    # the generator's juxtapleural depth for a 15 mm nodule: 0.85 x 7.5 + 1 = 7.4 mm, +- 2.6 mm
    assert all(abs(d - 7.4) < 2.7 for d in pleural)
    assert max(plain) > 10.0  # plain pastes go anywhere in the lung (or the air outside the body)


def test_pleural_paste_fraction_changes_where_patches_get_their_pasted_nodules() -> None:
    def batch(fraction: float) -> torch.Tensor:
        cfg = TrainConfig(
            patch=(32, 32, 32),
            batch=8,
            positive_fraction=0.0,
            paste_probability=1.0,
            pleural_paste_fraction=fraction,
        )
        return DetectorPatches([toy_study()], cfg, np.random.default_rng(0)).batch(np.random.default_rng(2))[
            1
        ]

    assert torch.equal(batch(0.0), batch(0.0))
    assert not torch.equal(batch(0.0), batch(1.0))


def test_hard_positives_go_to_the_nodule_the_start_detector_misses() -> None:
    def small_share(fraction: float) -> float:
        cfg = TrainConfig(
            patch=(32, 32, 32), batch=64, positive_fraction=1.0, paste_probability=0.0,
            hard_positive_fraction=fraction,
        )  # fmt: skip
        # The start detector found the 15 mm nodule (peak 0.99) and missed the 4.5 mm one (0.01).
        peaks = [np.array([0.01, 0.99])]
        patches = DetectorPatches([toy_study()], cfg, np.random.default_rng(0), peaks)
        weight = patches.batch(np.random.default_rng(1))[2]
        return float((weight == weight.max()).flatten(1).any(1).float().mean())

    # Uniform per nodule: half the patches are centred on the small one, and some of the big
    # one's hold it too (18 voxels away, patches jittered by up to 8).
    assert small_share(0.0) < 0.8
    # All hard: odds 0.99 + 0.02 against 0.01 + 0.02, so about 97 % are centred on the small one.
    assert small_share(1.0) > 0.9


def test_nodule_peaks_read_the_network_inside_each_nodule_only() -> None:
    class Bright(torch.nn.Module):
        """Probability = the image itself (logit of the clipped intensity)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.logit(x.clamp(1e-4, 1 - 1e-4))

    study = toy_study()
    image = study.image.copy()
    image[study.image >= SOFT - 0.05] = 0.3  # body and nodules at 0.3 ...
    image[nodule_index_volume(image.shape, study) == 2] = 0.9  # ... except the 15 mm nodule
    darker = CachedStudy("toy", image, study.affine, SPACING, study.box, study.nodules)
    (peaks,) = nodule_peaks(Bright(), [darker], (32, 32, 32))
    assert peaks == pytest.approx([0.3, 0.9], abs=1e-3)


def test_hard_positives_need_a_start_detector() -> None:
    cfg = TrainConfig(steps=1, batch=1, patch=(32, 32, 32), hard_positive_fraction=0.5)
    with pytest.raises(ValueError, match="needs a start detector"):
        train_detector([toy_study()], cfg, log=lambda _: None)


def test_output_prior_starts_the_detector_near_background() -> None:
    torch.manual_seed(0)
    net = build_module(DETECTOR_FACTORY, DETECTOR_KWARGS)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = torch.sigmoid(net(x)).mean().item()
        init_output_prior(net, 0.01)
        after = torch.sigmoid(net(x)).mean().item()
    assert before > 0.2
    assert after < 0.05


def test_loss_is_lower_for_the_right_answer() -> None:
    label = torch.zeros(2, 1, 16, 16, 16)
    label[0, 0, 6:10, 6:10, 6:10] = 1
    weight = torch.where(label > 0, torch.tensor(10.0), torch.tensor(1.0))
    for balanced in (False, True):
        right = detector_loss(label * 12 - 6, (label, weight), balanced_dice=balanced)
        wrong = detector_loss(-label * 12 + 6, (label, weight), balanced_dice=balanced)
        assert right < 0.1 < wrong


def test_balanced_dice_weighs_a_missed_small_nodule_as_the_weights_say() -> None:
    label = torch.zeros(1, 1, 24, 24, 24)
    label[0, 0, 2:14, 2:14, 2:14] = 1  # a large nodule, found
    label[0, 0, 19:21, 19:21, 19:21] = 1  # a small one, missed
    weight = torch.ones_like(label)
    weight[0, 0, 19:21, 19:21, 19:21] = 50.0
    logits = torch.full_like(label, -6.0)
    logits[0, 0, 2:14, 2:14, 2:14] = 6.0
    plain = detector_loss(logits, (label, weight))
    balanced = detector_loss(logits, (label, weight), balanced_dice=True)
    # 8 of 1736 nodule voxels missed: plain Dice hardly notices (1 - 3456/3464); weighted,
    # they are 400 of 2128 and the Dice term is 1 - 3456/3856, about 0.10 more.
    assert 0.08 < balanced - plain < 0.12


def test_mined_candidates_become_crops_with_their_labels() -> None:
    study = toy_study()
    mined = {"toy": [MinedCandidate((24.0, 40.5, 32.0), 1), MinedCandidate((60.0, 30.0, 30.0), None)]}
    rng = np.random.default_rng(0)
    plain = classifier_samples([study], rng, negatives_per_study=4, pasted_per_study=0)
    samples = classifier_samples([study], rng, negatives_per_study=4, pasted_per_study=0, mined=mined)
    assert len(samples) > len(plain) >= 8  # truth crops and random negatives are still there
    extra = samples[:6]  # a study's mined candidates come first, three jittered crops each
    assert [x.is_nodule for x in extra] == [1.0] * 3 + [0.0] * 3
    assert all(x.malignancy == 0.8 and x.type_index == 0 for x in extra[:3])  # the 15 mm nodule's labels
    assert mined_counts(mined) == {"hits": 1, "false_positives": 1}


@pytest.mark.slow
def test_the_reference_detector_mines_the_large_toy_nodule_as_a_hit() -> None:
    detector = Checkpoint.load(PROJECT_ROOT / "export" / "checkpoints" / "lung_nodule_detector.pt")
    study = toy_study()
    messages: list[str] = []
    mined = mine_candidates([study], detector, log=messages.append)["toy"]
    assert len(messages) == 1 and messages[0].startswith("mining candidates: 1/1 studies (")
    # Whether the 4.5 mm one is found as well depends on the weights; the 15 mm one must be.
    hits = [c for c in mined if c.nodule == 1]
    assert len(hits) == 1
    offset = np.subtract(hits[0].center_ijk, study.nodules[1].center_ijk) * SPACING
    assert np.linalg.norm(offset) <= study.nodules[1].diameter_mm / 2


@pytest.mark.slow
def test_a_few_steps_train_and_end_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = iter(["abc1234", "def5678+modified"])  # the tree changes while it trains
    monkeypatch.setattr("export.train.code_version", lambda: next(versions))
    cfg = TrainConfig(steps=3, batch=2, patch=(32, 32, 32), threads=1)
    ckpt = train_detector([toy_study()], cfg, log=lambda _: None)
    assert ckpt.training["code_version"] == "abc1234"  # where the run started
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    assert len(ckpt.training["loss_history"]) == 1
    assert ckpt.training["device"] == "cpu"


@pytest.mark.slow
def test_a_warm_restart_starts_from_the_given_detector_and_keeps_its_record() -> None:
    cfg = TrainConfig(steps=2, batch=2, patch=(32, 32, 32), threads=1)
    first = train_detector([toy_study()], cfg, log=lambda _: None)
    frozen = TrainConfig(steps=2, batch=2, patch=(32, 32, 32), threads=1, learning_rate=0.0, seed=7)
    second = train_detector([toy_study()], frozen, log=lambda _: None, start=first)
    # With a zero learning rate the restart must hand back exactly the weights it started from.
    assert all(torch.equal(second.state_dict[k], v) for k, v in first.state_dict.items())
    assert second.training["previous"] == first.training
    assert second.training["config"]["seed"] == 7


def test_precision_auto_means_bf16_only_where_the_hardware_has_it() -> None:
    cpu = torch.device("cpu")
    assert effective_precision("fp32", cpu) == "fp32"
    assert effective_precision("bf16", cpu) == "bf16"
    assert effective_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        effective_precision("fp16", cpu)


@pytest.mark.slow
def test_bf16_training_keeps_float32_weights_and_records_it() -> None:
    cfg = TrainConfig(steps=3, batch=2, patch=(32, 32, 32), threads=1, precision="bf16")
    ckpt = train_detector([toy_study()], cfg, log=lambda _: None)
    assert ckpt.training["precision"] == "bf16"
    weights = [t for t in ckpt.state_dict.values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights)
    assert np.isfinite(ckpt.training["loss_history"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU training path not exercised")
def test_training_on_cuda_returns_cpu_weights() -> None:
    cfg = TrainConfig(steps=3, batch=2, patch=(32, 32, 32), device="cuda", loader_workers=1)
    ckpt = train_detector([toy_study()], cfg, log=lambda _: None)
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    assert ckpt.training["device"] != "cpu"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's mallopt")
def test_training_keeps_freed_buffers_for_the_next_step() -> None:
    assert reuse_freed_memory()
