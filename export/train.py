"""Training of the two reference models on cached synthetic studies (CPU-feasible, seeded).

The detector learns a nodule mask (spheres of the truth diameter) from 3D patches sampled half
on nodules and half on hard negatives (vessels, chest wall, mediastinum inside the lung box),
with MONAI dictionary transforms for sampling and augmentation. The classifier learns, on crops
around true nodules and around hard negatives, whether a candidate is a nodule, its malignancy
(the synthetic rule's score as a soft target) and its type.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    RandAxisFlipd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch import nn

from export.checkpoint import Checkpoint, build_module
from export.dataset import CachedStudy
from export.networks import (
    CLASSIFIER_CROP,
    CLASSIFIER_FACTORY,
    CLASSIFIER_KWARGS,
    CLASSIFIER_SLOTS,
    CLASSIFIER_SPEC,
    DETECTOR_FACTORY,
    DETECTOR_KWARGS,
    DETECTOR_SPEC,
)
from pipeline.postprocess import SOLID_HU, crop_around
from pipeline.preprocess import LUNG_HU_THRESHOLD, lung_region

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the checkpoint)."""

    steps: int = 1200
    batch_volumes: int = 2
    samples_per_volume: int = 4
    patch: tuple[int, int, int] = (48, 48, 48)
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    paste_probability: float = 0.5  # share of negative patches that get a pasted training nodule


def code_version() -> str:
    """The git commit the training ran from ("unknown" outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def sphere_label(shape: Sequence[int], study: CachedStudy) -> np.ndarray:
    """1 inside a sphere of each truth nodule's diameter, 0 elsewhere."""
    label = np.zeros(tuple(shape), dtype=np.float32)
    spacing = np.asarray(study.spacing)
    for nod in study.nodules:
        radius = nod.diameter_mm / 2.0
        lo = np.maximum(np.floor(np.asarray(nod.center_ijk) - radius / spacing - 1).astype(int), 0)
        hi = np.minimum(np.ceil(np.asarray(nod.center_ijk) + radius / spacing + 2).astype(int), shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, nod.center_ijk, spacing, strict=True))
        sub = label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        sub[dist2 <= max(radius, 0.75 * spacing.min()) ** 2] = 1.0
    return label


def _dense_level() -> float:
    low, high = DETECTOR_SPEC.hu_window
    return (SOLID_HU - low) / (high - low)


def _lung_level() -> float:
    low, high = DETECTOR_SPEC.hu_window
    return (LUNG_HU_THRESHOLD - low) / (high - low)


def vessel_mask(study: CachedStudy) -> np.ndarray:
    """Dense voxels inside the (slightly grown) lungs: vessels, airway walls, nodules."""
    return lung_region(study.preprocessed, DETECTOR_SPEC, margin_mm=3.0) & (study.image >= _dense_level())


def hard_negative_indices(study: CachedStudy, rng: np.random.Generator, limit: int = 40000) -> np.ndarray:
    """Flat indices of hard negatives: mostly vessels in the lungs, some walls and parenchyma."""
    box_mask = np.zeros(study.image.shape, dtype=bool)
    box_mask[study.box] = True
    vessels = np.flatnonzero(vessel_mask(study))
    dense = np.flatnonzero(box_mask & (study.image >= _dense_level()))
    anywhere = np.flatnonzero(box_mask)
    parts = [(vessels, 0.6), (dense, 0.2), (anywhere, 0.2)]
    return np.concatenate(
        [
            rng.choice(idx, size=min(int(limit * share), idx.size), replace=False)
            for idx, share in parts
            if idx.size
        ]
    )


@dataclass(frozen=True)
class BankNodule:
    """A training nodule cut out as its signal above the local lung background, for pasting."""

    excess: np.ndarray
    mask: np.ndarray
    type_index: int
    malignancy: float


def nodule_bank(studies: Sequence[CachedStudy]) -> list[BankNodule]:
    """Every training nodule, as (signal above background, sphere mask) cubes.

    Pasting them at random lung positions of other studies (raise-only, as the generator draws
    nodules) shows the networks many more nodule/context pairs than 48 studies hold, so they
    learn the nodule, not where the training nodules happened to be.
    """
    bank = []
    for s in studies:
        spacing = np.asarray(s.spacing)
        for n in s.nodules:
            r = n.diameter_mm / 2.0
            half = np.ceil((r + 3.0) / spacing).astype(int)
            size = tuple(int(2 * h + 1) for h in half)
            cube = crop_around(s.image, n.center_ijk, size, fill=0.0)
            grids = np.meshgrid(*[np.arange(k) - k // 2 for k in size], indexing="ij")
            offset = np.asarray(n.center_ijk) - np.round(n.center_ijk)
            dist = np.sqrt(sum(((g - o) * sp) ** 2 for g, o, sp in zip(grids, offset, spacing, strict=True)))
            shell = (dist > r + 1.5) & (dist <= r + 3.0)
            background = float(np.median(cube[shell])) if shell.any() else 0.0
            weight = np.clip((r + 1.5 - dist) / 1.5, 0.0, 1.0)
            excess = (np.clip(cube - background, 0.0, None) * weight).astype(np.float32)
            mask = (dist <= max(r, 0.75 * spacing.min())).astype(np.float32)
            bank.append(BankNodule(excess, mask, n.type_index, n.malignancy_score))
    return bank


def paste_nodule(
    image: np.ndarray, label: np.ndarray | None, nod: BankNodule, rng: np.random.Generator
) -> tuple[int, int, int] | None:
    """Paste a (randomly flipped) bank nodule at a random lung voxel of ``image`` in place."""
    size = np.asarray(nod.excess.shape)
    if np.any(size >= np.asarray(image.shape)):
        return None
    lo = size // 2
    hi = np.asarray(image.shape) - (size - size // 2)
    inner = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    spots = np.argwhere(inner < _lung_level())
    if not len(spots):
        return None
    center = spots[rng.integers(len(spots))] + lo
    axes = tuple(a for a in range(3) if rng.uniform() < 0.5)
    excess = np.flip(nod.excess, axis=axes) if axes else nod.excess
    mask = np.flip(nod.mask, axis=axes) if axes else nod.mask
    region = tuple(slice(int(c - k // 2), int(c - k // 2 + k)) for c, k in zip(center, size, strict=True))
    image[region] = np.minimum(image[region] + excess, 1.0)
    if label is not None:
        label[region] = np.maximum(label[region], mask)
    return tuple(int(c) for c in center)  # type: ignore[return-value]


def detector_sampler(cfg: TrainConfig) -> Compose:
    """Positive/negative patch sampling and augmentation (MONAI dictionary transforms)."""
    return Compose(
        [
            RandCropByPosNegLabeld(
                keys=("image", "label"),
                label_key="label",
                spatial_size=cfg.patch,
                pos=1.0,
                neg=1.0,
                num_samples=cfg.samples_per_volume,
                fg_indices_key="fg",
                bg_indices_key="bg",
                allow_smaller=True,
            ),
            RandAxisFlipd(keys=("image", "label"), prob=0.5),
            RandRotate90d(keys=("image", "label"), prob=0.5, spatial_axes=(0, 1)),
            RandScaleIntensityd(keys="image", factors=0.08, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.03, prob=0.5),
            RandGaussianNoised(keys="image", std=0.015, prob=0.3),
        ]
    )


def train_detector(studies: Sequence[CachedStudy], cfg: TrainConfig, log: Log = print) -> Checkpoint:
    """Train the nodule detector; returns its checkpoint."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    items = []
    for s in studies:
        label = sphere_label(s.image.shape, s)
        items.append(
            {
                "image": s.image[None],
                "label": label[None],
                "fg": np.flatnonzero(label) if label.any() else hard_negative_indices(s, rng, 64),
                "bg": hard_negative_indices(s, rng),
            }
        )
    sampler = detector_sampler(cfg)
    sampler.set_random_state(seed=cfg.seed)
    bank = nodule_bank(studies)
    net = build_module(DETECTOR_FACTORY, DETECTOR_KWARGS)
    # Dice over the whole batch: per-patch Dice is degenerate on the many nodule-free patches
    # (any predicted mass costs the full loss) and teaches the network to predict nothing.
    loss_fn = DiceCELoss(sigmoid=True, squared_pred=True, batch=True, smooth_nr=1e-4, smooth_dr=1e-4)
    history = _fit(
        net,
        lambda: _detector_batch(items, sampler, rng, cfg, bank),
        lambda out, target: loss_fn(out, target),
        cfg,
        log,
        "detector",
    )
    return Checkpoint(
        DETECTOR_FACTORY,
        DETECTOR_KWARGS,
        net.state_dict(),
        DETECTOR_SPEC,
        {
            "config": asdict(cfg),
            "studies": [s.key for s in studies],
            "code_version": code_version(),
            **history,
        },
    )


def _detector_batch(
    items: list[dict[str, Any]],
    sampler: Compose,
    rng: np.random.Generator,
    cfg: TrainConfig,
    bank: Sequence[BankNodule],
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = rng.choice(len(items), size=cfg.batch_volumes, replace=False)
    crops = [c for i in chosen for c in sampler(items[i])]
    images, labels = [], []
    for c in crops:
        image = np.array(c["image"][0], dtype=np.float32)
        label = np.array(c["label"][0], dtype=np.float32)
        if bank and label.max() == 0 and rng.uniform() < cfg.paste_probability:
            paste_nodule(image, label, bank[rng.integers(len(bank))], rng)
        images.append(image)
        labels.append(label)
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


@dataclass(frozen=True)
class CropSample:
    """One classifier training example."""

    image: np.ndarray
    is_nodule: float
    malignancy: float
    type_index: int


def classifier_samples(
    studies: Sequence[CachedStudy],
    rng: np.random.Generator,
    negatives_per_study: int = 40,
    pasted_per_study: int = 12,
    bank: Sequence[BankNodule] = (),
) -> list[CropSample]:
    """Crops at true nodules (with jitter) and at hard negatives, as in deployment."""
    out: list[CropSample] = []
    for s in studies:
        for nod in s.nodules:
            for _ in range(4):
                jitter = rng.normal(0.0, 1.0, size=3)
                crop = crop_around(s.image, np.asarray(nod.center_ijk) + jitter, CLASSIFIER_CROP)
                out.append(CropSample(crop, 1.0, nod.malignancy_score, nod.type_index))
        negatives = hard_negative_indices(s, rng, limit=negatives_per_study * 4)
        for _ in range(pasted_per_study):
            nod = bank[rng.integers(len(bank))] if bank else None
            work = s.image.copy() if nod is not None else None
            center = paste_nodule(work, None, nod, rng) if nod is not None else None
            if center is not None:
                crop = crop_around(work, np.asarray(center) + rng.normal(0.0, 1.0, size=3), CLASSIFIER_CROP)
                out.append(CropSample(crop, 1.0, nod.malignancy, nod.type_index))
        centers = [
            np.unravel_index(i, s.image.shape)
            for i in rng.choice(negatives, size=negatives_per_study, replace=False)
        ]
        for c in centers:
            if all(
                np.linalg.norm((np.asarray(c) - np.asarray(n.center_ijk)) * np.asarray(s.spacing))
                > n.diameter_mm
                for n in s.nodules
            ):
                out.append(CropSample(crop_around(s.image, c, CLASSIFIER_CROP), 0.0, 0.0, -1))
    return out


def classifier_loss(out: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Nodule BCE on all crops; malignancy BCE (soft) and type CE on nodule crops only."""
    bce = nn.functional.binary_cross_entropy_with_logits
    loss = bce(out[:, CLASSIFIER_SLOTS["nodule"]], target["is_nodule"])
    pos = target["is_nodule"] > 0.5
    if pos.any():
        loss = loss + bce(out[pos, CLASSIFIER_SLOTS["malignancy"]], target["malignancy"][pos])
        loss = loss + nn.functional.cross_entropy(out[pos][:, CLASSIFIER_SLOTS["type"]], target["type"][pos])
    return loss


def train_classifier(
    studies: Sequence[CachedStudy],
    cfg: TrainConfig,
    log: Log = print,
) -> Checkpoint:
    """Train the candidate classifier; returns its checkpoint."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed + 1)
    samples = classifier_samples(studies, rng, bank=nodule_bank(studies))
    images = torch.from_numpy(np.stack([s.image for s in samples])[:, None])
    target = {
        "is_nodule": torch.tensor([s.is_nodule for s in samples], dtype=torch.float32),
        "malignancy": torch.tensor([s.malignancy for s in samples], dtype=torch.float32),
        "type": torch.tensor([max(s.type_index, 0) for s in samples], dtype=torch.int64),
    }
    batch = cfg.batch_volumes * cfg.samples_per_volume * 4

    def next_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.from_numpy(rng.choice(len(samples), size=min(batch, len(samples)), replace=False))
        x = images[idx]
        for axis in (2, 3, 4):  # flips along each axis keep nodule shape statistics
            if rng.uniform() < 0.5:
                x = torch.flip(x, dims=(axis,))
        if rng.uniform() < 0.5:
            x = torch.rot90(x, k=int(rng.integers(1, 4)), dims=(2, 3))
        return x, {k: v[idx] for k, v in target.items()}

    net = build_module(CLASSIFIER_FACTORY, CLASSIFIER_KWARGS)
    history = _fit(net, next_batch, classifier_loss, cfg, log, "classifier")
    return Checkpoint(
        CLASSIFIER_FACTORY,
        CLASSIFIER_KWARGS,
        net.state_dict(),
        CLASSIFIER_SPEC,
        {
            "config": asdict(cfg),
            "studies": [s.key for s in studies],
            "samples": len(samples),
            "code_version": code_version(),
            **history,
        },
    )


def _fit(
    net: nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, Any]],
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    cfg: TrainConfig,
    log: Log,
    name: str,
) -> dict[str, Any]:
    """AdamW with a cosine schedule; returns the loss history for the checkpoint."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    net.train()
    losses: list[float] = []
    started = time.monotonic()
    for step in range(1, cfg.steps + 1):
        x, target = next_batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps:
            recent = float(np.mean(losses[-50:]))
            log(f"{name} step {step}/{cfg.steps} loss {recent:.4f} ({time.monotonic() - started:.0f} s)")
    net.eval()
    return {"loss_history": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
            "train_seconds": time.monotonic() - started}  # fmt: skip
