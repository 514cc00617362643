"""Training of the two reference models on cached synthetic studies (CPU-feasible, seeded).

The detector learns a nodule mask (spheres of the truth diameter) from 3D patches sampled half
around nodules (uniformly per nodule, or favouring those a warm restart's start detector sees
worst: ``hard_positive_fraction``) and half on hard negatives (vessels, chest wall,
mediastinum inside the lung box), with nodule-balanced loss weights and MONAI dictionary
transforms for augmentation. The classifier learns, on crops
around true nodules and around hard negatives, whether a candidate is a nodule, its malignancy
(the synthetic rule's score as a soft target) and its type.
"""

from __future__ import annotations

import ctypes
import math
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.transforms import (
    Compose,
    RandAxisFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from scipy import ndimage
from torch import nn

from export.checkpoint import Checkpoint, build_module
from export.dataset import CachedStudy
from export.evaluate import TorchRunner
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
from export.recipe import TrainConfig, TrainPrecision
from pipeline.analysis import AnalysisConfig, detect
from pipeline.postprocess import SOLID_HU, crop_around
from pipeline.preprocess import AXIAL_NEIGHBOURS, LUNG_HU_THRESHOLD, lung_box, lung_region

Log = Callable[[str], None]


def code_version() -> str:
    """The git commit the training ran from, ``+modified`` when tracked files differed from it
    ("unknown" outside a checkout)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+modified" if dirty else head


def nodule_index_volume(shape: Sequence[int], study: CachedStudy) -> np.ndarray:
    """``k + 1`` inside a sphere of truth nodule ``k``'s diameter, 0 elsewhere (uint8)."""
    label = np.zeros(tuple(shape), dtype=np.uint8)
    spacing = np.asarray(study.spacing)
    for k, nod in enumerate(study.nodules):
        radius = nod.diameter_mm / 2.0
        lo = np.maximum(np.floor(np.asarray(nod.center_ijk) - radius / spacing - 1).astype(int), 0)
        hi = np.minimum(np.ceil(np.asarray(nod.center_ijk) + radius / spacing + 2).astype(int), shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, nod.center_ijk, spacing, strict=True))
        sub = label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        sub[dist2 <= max(radius, 0.75 * spacing.min()) ** 2] = k + 1
    return label


def nodule_voxel_weight(voxels: float, spacing: Sequence[float], cfg: TrainConfig) -> float:
    """Loss weight of each voxel of a nodule of ``voxels`` voxels (see ``balance_diameter_mm``)."""
    reference = np.pi / 6.0 * cfg.balance_diameter_mm**3 / float(np.prod(spacing))
    return float(np.clip(reference / max(voxels, 1.0), 1.0, cfg.max_voxel_weight))


def _dense_level() -> float:
    low, high = DETECTOR_SPEC.hu_window
    return (SOLID_HU - low) / (high - low)


def _lung_level() -> float:
    low, high = DETECTOR_SPEC.hu_window
    return (LUNG_HU_THRESHOLD - low) / (high - low)


def grown_lungs(study: CachedStudy) -> np.ndarray:
    """The study's lung mask grown by 3 mm (vessels and nodules it encloses included)."""
    return lung_region(study.preprocessed, DETECTOR_SPEC, margin_mm=3.0)


def hard_negative_indices(
    study: CachedStudy, rng: np.random.Generator, limit: int = 40000, lungs: np.ndarray | None = None
) -> np.ndarray:
    """Flat indices of hard negatives: mostly vessels in the lungs, some walls and parenchyma.

    ``lungs`` is :func:`grown_lungs` of the study when the caller already has it."""
    box_mask = np.zeros(study.image.shape, dtype=bool)
    box_mask[study.box] = True
    lungs = grown_lungs(study) if lungs is None else lungs
    vessels = np.flatnonzero(lungs & (study.image >= _dense_level()))
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
    spacing: tuple[float, float, float]
    diameter_mm: float


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
            bank.append(BankNodule(excess, mask, n.type_index, n.malignancy_score, s.spacing, n.diameter_mm))
    return bank


def paste_nodule(
    image: np.ndarray,
    label: np.ndarray | None,
    nod: BankNodule,
    rng: np.random.Generator,
    *,
    lungs: np.ndarray | None = None,
) -> tuple[int, int, int] | None:
    """Paste a (randomly flipped) bank nodule at a random lung voxel of ``image`` in place.

    With ``lungs`` (the image's lung mask, however coarse) the nodule goes against the lung's
    edge where the generator puts juxtapleural nodules (0.85 r + 1 mm deep, within
    max(2 mm, 0.35 r); ``synth.findings.place_nodules``) and raises lung voxels only, so it
    abuts the chest wall as they do; an image with no lung edge at that depth gets it at a
    plain lung voxel.
    """
    size = np.asarray(nod.excess.shape)
    if np.any(size >= np.asarray(image.shape)):
        return None
    lo = size // 2
    hi = np.asarray(image.shape) - (size - size // 2)
    inner = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    air = image < _lung_level()
    spots = np.zeros((0, 3), dtype=int)
    if lungs is not None:
        # Air inside the lungs, with the vessels it encloses in each axial slice.
        lungs = ndimage.binary_fill_holes(air & lungs, structure=AXIAL_NEIGHBOURS)
        depth = ndimage.distance_transform_edt(lungs, sampling=nod.spacing)[inner]
        target, tolerance = 0.85 * nod.diameter_mm / 2.0 + 1.0, max(2.0, 0.35 * nod.diameter_mm / 2.0)
        spots = np.argwhere(air[inner] & (np.abs(depth - target) < tolerance))
    if not len(spots):
        spots = np.argwhere(air[inner])
    if not len(spots):
        return None
    center = spots[rng.integers(len(spots))] + lo
    axes = tuple(a for a in range(3) if rng.uniform() < 0.5)
    excess = np.flip(nod.excess, axis=axes) if axes else nod.excess
    mask = np.flip(nod.mask, axis=axes) if axes else nod.mask
    region = tuple(slice(int(c - k // 2), int(c - k // 2 + k)) for c, k in zip(center, size, strict=True))
    if lungs is not None:
        excess = excess * lungs[region]
    image[region] = np.minimum(image[region] + excess, 1.0)
    if label is not None:
        label[region] = np.maximum(label[region], mask)
    return tuple(int(c) for c in center)  # type: ignore[return-value]


_PATCH_KEYS = ("image", "label", "weight")


def detector_augmentation() -> Compose:
    """Flips, axial 90-degree turns and intensity jitter (MONAI dictionary transforms)."""
    return Compose(
        [
            RandAxisFlipd(keys=_PATCH_KEYS, prob=0.5),
            RandRotate90d(keys=_PATCH_KEYS, prob=0.5, spatial_axes=(0, 1)),
            RandScaleIntensityd(keys="image", factors=0.08, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.03, prob=0.5),
            RandGaussianNoised(keys="image", std=0.015, prob=0.3),
        ]
    )


@dataclass
class _DetectorStudy:
    image: np.ndarray
    index: np.ndarray  # nodule_index_volume
    weights: np.ndarray  # voxel weight per nodule index (0: background)
    centers: np.ndarray  # (n, 3) truth centres in voxels
    negatives: np.ndarray  # flat hard-negative indices
    lungs: np.ndarray | None  # lung mask, kept for pleural pastes only


class DetectorPatches:
    """Makes detector training batches: patches, sphere labels and nodule-balanced weights.

    A share of the patches is centred near a real nodule, chosen uniformly among nodules (not
    voxels, which would favour the large ones); the rest are centred on hard negatives, half of
    them with a bank nodule pasted in. With ``peaks`` (:func:`nodule_peaks` of the start
    detector), ``cfg.hard_positive_fraction`` of the nodule patches favour the nodules it sees worst.
    """

    def __init__(
        self,
        studies: Sequence[CachedStudy],
        cfg: TrainConfig,
        rng: np.random.Generator,
        peaks: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.cfg = cfg
        self.bank = nodule_bank(studies)
        self.bank_weights = [nodule_voxel_weight(float(b.mask.sum()), b.spacing, cfg) for b in self.bank]
        self.studies = []
        for s in studies:
            index = nodule_index_volume(s.image.shape, s)
            voxels = np.bincount(index.ravel(), minlength=len(s.nodules) + 1)
            weights = np.array(
                [1.0] + [nodule_voxel_weight(float(v), s.spacing, cfg) for v in voxels[1:]], dtype=np.float32
            )
            centers = np.array([n.center_ijk for n in s.nodules], dtype=np.float64).reshape(-1, 3)
            lungs = grown_lungs(s)
            negatives = hard_negative_indices(s, rng, lungs=lungs)
            kept = lungs if cfg.pleural_paste_fraction > 0 else None
            self.studies.append(_DetectorStudy(s.image, index, weights, centers, negatives, kept))
        self.with_nodules = [s for s in self.studies if len(s.centers)]
        self.augment = detector_augmentation()
        # (study, nodule) pairs for hard positives, drawn with odds 1 - peak (+ a floor, so a
        # nodule the detector already finds is not dropped altogether).
        self.hard: tuple[list[tuple[_DetectorStudy, int]], np.ndarray] | None = None
        if peaks is not None and cfg.hard_positive_fraction > 0:
            pairs = [(d, k) for d, p in zip(self.studies, peaks, strict=True) for k in range(len(p))]
            odds = np.concatenate([1.0 - np.asarray(p, dtype=np.float64) for p in peaks]) + 0.02
            self.hard = (pairs, odds / odds.sum())

    def patch(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One augmented patch as ``{"image", "label", "weight"}`` (each ``(1, *patch)``)."""
        cfg = self.cfg
        size = np.asarray(cfg.patch)
        if self.with_nodules and rng.uniform() < cfg.positive_fraction:
            # Drawn only when asked for, as the pleural pastes below.
            if self.hard is not None and rng.uniform() < cfg.hard_positive_fraction:
                pairs, odds = self.hard
                s, k = pairs[rng.choice(len(pairs), p=odds)]
            else:
                s = self.with_nodules[rng.integers(len(self.with_nodules))]
                k = int(rng.integers(len(s.centers)))
            center = s.centers[k] + rng.uniform(-1, 1, 3) * size / 4
        else:
            s = self.studies[rng.integers(len(self.studies))]
            center = np.asarray(np.unravel_index(s.negatives[rng.integers(len(s.negatives))], s.image.shape))
        image = crop_around(s.image, center, cfg.patch)
        index = crop_around(s.index, center, cfg.patch).astype(np.int64)
        label = (index > 0).astype(np.float32)
        weight = s.weights[index]
        if self.bank and not label.any() and rng.uniform() < cfg.paste_probability:
            k = int(rng.integers(len(self.bank)))
            pasted = np.zeros_like(label)
            lungs = None
            # Drawn only when asked for, so recipes without pleural pastes keep their random stream.
            if s.lungs is not None and rng.uniform() < cfg.pleural_paste_fraction:
                lungs = crop_around(s.lungs, center, cfg.patch) > 0
            if paste_nodule(image, pasted, self.bank[k], rng, lungs=lungs) is not None:
                label = np.maximum(label, pasted)
                weight = np.where(pasted > 0, self.bank_weights[k], weight).astype(np.float32)
        sample = {"image": image[None], "label": label[None], "weight": weight[None]}
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.augment(sample).items()}

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``cfg.batch`` patches stacked as (image, label, weight) tensors of shape (B, 1, *patch)."""
        patches = [self.patch(rng) for _ in range(self.cfg.batch)]
        return tuple(
            torch.from_numpy(np.stack([p[k] for p in patches])) for k in ("image", "label", "weight")
        )  # type: ignore[return-value]


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless batches from a batch function, seeded per loader worker."""

    def __init__(self, make: Callable[[np.random.Generator], Any], seed: int) -> None:
        self.make, self.seed = make, seed

    def __iter__(self) -> Any:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield self.make(rng)


def batches(make: Callable[[np.random.Generator], Any], cfg: TrainConfig) -> Callable[[], Any]:
    """A ``next_batch`` function: in-process, or from ``cfg.loader_workers`` processes."""
    if cfg.loader_workers == 0:
        rng = np.random.default_rng(cfg.seed)
        return lambda: make(rng)
    loader = torch.utils.data.DataLoader(
        _BatchStream(make, cfg.seed),
        batch_size=None,
        num_workers=cfg.loader_workers,
        prefetch_factor=4,
        persistent_workers=True,
        pin_memory=cfg.device.startswith("cuda"),
    )
    stream = iter(loader)
    return lambda: next(stream)


def detector_loss(
    logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor], *, balanced_dice: bool = False
) -> torch.Tensor:
    """Nodule-balanced binary cross-entropy plus Dice over the whole batch.

    The weights keep small nodules from drowning in the voxels of large ones; batch Dice
    (not per patch: it is degenerate on the many nodule-free patches) keeps the mask's extent,
    which the job measures diameters and volumes from. Plain Dice's gradient measured 13 times
    the cross-entropy's on small nodules' voxels and 28 times on the background
    (export/README.md), so the loss weighed voxels, not nodules; ``balanced_dice`` weighs the
    Dice sums by the same voxel weights as the cross-entropy.
    """
    label, weight = target
    bce = nn.functional.binary_cross_entropy_with_logits(logits, label, weight=weight, reduction="sum")
    if not balanced_dice:
        return bce / weight.sum() + _DICE(logits, label)
    prob = torch.sigmoid(logits)
    overlap = (weight * prob * label).sum()
    total = (weight * prob.square()).sum() + (weight * label.square()).sum()
    return bce / weight.sum() + 1.0 - (2.0 * overlap + 1e-4) / (total + 1e-4)


_DICE = DiceLoss(sigmoid=True, squared_pred=True, batch=True, smooth_nr=1e-4, smooth_dr=1e-4)


# Share of nodule voxels the detector's output starts at. Behind instance norm the output
# logit moves only ~lr per step: from 0 (p = 0.5 everywhere) it took most of a CPU training
# budget just to learn that almost every voxel is background.
OUTPUT_PRIOR = 0.01


def init_output_prior(net: nn.Module, prior: float) -> None:
    """Set the bias of the network's last convolution to the log-odds of ``prior``."""
    last = [m for m in net.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)][-1]
    if last.bias is None:
        raise ValueError(f"{type(net).__name__}'s output convolution has no bias to initialise")
    nn.init.constant_(last.bias, math.log(prior / (1.0 - prior)))


def nodule_peaks(net: nn.Module, studies: Sequence[CachedStudy], patch: Sequence[int]) -> list[np.ndarray]:
    """Per study, ``net``'s peak probability inside each truth nodule's sphere.

    One pass on a ``patch`` centred on each nodule, not the job's stitched and mirrored map:
    cheap enough to run before a training cycle, and a nodule the network barely sees there it
    barely sees in the job either.
    """
    peaks = []
    net.eval()
    with torch.no_grad():
        for s in studies:
            index = nodule_index_volume(s.image.shape, s)
            found = np.zeros(len(s.nodules))
            for k, nod in enumerate(s.nodules):
                image = crop_around(s.image, nod.center_ijk, patch)[None, None].astype(np.float32)
                inside = crop_around(index, nod.center_ijk, patch) == k + 1
                if inside.any():
                    prob = torch.sigmoid(net(torch.from_numpy(image)))[0, 0].numpy()
                    found[k] = float(prob[inside].max())
            peaks.append(found)
    return peaks


def train_detector(
    studies: Sequence[CachedStudy], cfg: TrainConfig, log: Log = print, start: Checkpoint | None = None
) -> Checkpoint:
    """Train the nodule detector; returns its checkpoint.

    ``start`` continues from a trained detector's weights with a fresh cosine cycle of ``cfg``
    (a warm restart) instead of from random weights; its training record is kept under
    ``previous`` in the new one. ``cfg.hard_positive_fraction`` needs it.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    peaks = None
    record: dict[str, Any] = {}
    if cfg.hard_positive_fraction > 0:
        if start is None:
            raise ValueError("hard_positive_fraction needs a start detector: it finds the hard nodules")
        peaks = nodule_peaks(start.build(), studies, cfg.patch)
        flat = np.concatenate(peaks)
        weak = int((flat < 0.5).sum())
        record["start_nodule_peaks"] = {"nodules": int(flat.size), "below_0.5": weak}
        log(f"detector start: {weak} of {flat.size} training nodules peak below 0.5")
    patches = DetectorPatches(studies, cfg, np.random.default_rng(cfg.seed), peaks)
    next_batch = batches(patches.batch, cfg)
    if start is None:
        factory, kwargs, spec = DETECTOR_FACTORY, DETECTOR_KWARGS, DETECTOR_SPEC
        net = build_module(factory, kwargs)
        init_output_prior(net, OUTPUT_PRIOR)
    else:
        factory, kwargs, spec = start.factory, start.kwargs, start.spec
        net = start.build()

    def split() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        image, label, weight = next_batch()
        return image, (label, weight)

    loss = partial(detector_loss, balanced_dice=cfg.balanced_dice)
    history = _fit(net, split, loss, cfg, log, "detector")
    return Checkpoint(
        factory,
        kwargs,
        net.state_dict(),
        spec,
        {
            "config": asdict(cfg),
            "studies": [s.key for s in studies],
            **history,
            **record,
            **({"previous": start.training} if start is not None else {}),
        },
    )


@dataclass(frozen=True)
class MinedCandidate:
    """A candidate the trained detector finds in a training study, as the job would find it."""

    center_ijk: tuple[float, float, float]
    nodule: int | None  # the truth nodule it hits (LUNA16: centre within the radius); None: a false positive


def mine_candidates(
    studies: Sequence[CachedStudy],
    detector: Checkpoint,
    cfg: AnalysisConfig | None = None,
    log: Log = print,
) -> dict[str, list[MinedCandidate]]:
    """Run the trained detector over the training studies and label its candidates.

    The classifier then learns on crops centred where the detector puts them: its false positives
    are the negatives that matter in deployment, and its hits are off-centre on large nodules.
    """
    cfg = cfg or AnalysisConfig()
    runner = TorchRunner({detector.spec.name: detector.build()})
    out: dict[str, list[MinedCandidate]] = {}
    # With the mirrored detector this is most of an hour on 2 cores: say how far it is.
    every = max(1, len(studies) // 12)
    started = time.monotonic()
    for done, study in enumerate(studies, 1):
        pre = study.preprocessed
        candidates, _, _ = detect(pre, detector.spec, runner, cfg, lung_box(pre, detector.spec))
        out[study.key] = [MinedCandidate(c.center_ijk, _hit(c.center_ijk, study)) for c in candidates]
        if done % every == 0 or done == len(studies):
            log(f"mining candidates: {done}/{len(studies)} studies ({time.monotonic() - started:.0f} s)")
    return out


def _hit(center_ijk: Sequence[float], study: CachedStudy) -> int | None:
    best: tuple[float, int] | None = None
    for i, nod in enumerate(study.nodules):
        dist = float(
            np.linalg.norm((np.asarray(center_ijk) - np.asarray(nod.center_ijk)) * np.asarray(study.spacing))
        )
        if dist <= nod.diameter_mm / 2.0 and (best is None or dist < best[0]):
            best = (dist, i)
    return None if best is None else best[1]


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
    mined: Mapping[str, Sequence[MinedCandidate]] | None = None,
    crops_per_mined: int = 3,
) -> list[CropSample]:
    """Crops at true nodules (with jitter), at hard negatives and, when given, at the trained
    detector's own candidates (:func:`mine_candidates`), as in deployment."""
    out: list[CropSample] = []
    for s in studies:
        for cand in (mined or {}).get(s.key, ()):
            for _ in range(crops_per_mined):
                crop = crop_around(
                    s.image, np.asarray(cand.center_ijk) + rng.normal(0.0, 1.0, size=3), CLASSIFIER_CROP
                )
                if cand.nodule is None:
                    out.append(CropSample(crop, 0.0, 0.0, -1))
                else:
                    nod = s.nodules[cand.nodule]
                    out.append(CropSample(crop, 1.0, nod.malignancy_score, nod.type_index))
        for nod in s.nodules:
            # The detector's centre of a large (often juxtapleural) nodule is off by a few mm,
            # and large nodules are rare: more crops, with jitter growing with the radius.
            radius_vox = nod.diameter_mm / 2.0 / float(np.mean(s.spacing))
            for _ in range(4 if nod.diameter_mm < 15.0 else 12):
                jitter = rng.normal(0.0, max(1.0, radius_vox / 4.0), size=3)
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
    mined: Mapping[str, Sequence[MinedCandidate]] | None = None,
) -> Checkpoint:
    """Train the candidate classifier (on the detector's mined candidates too, when given)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed + 1)
    samples = classifier_samples(studies, rng, bank=nodule_bank(studies), mined=mined)
    images = torch.from_numpy(np.stack([s.image for s in samples])[:, None])
    target = {
        "is_nodule": torch.tensor([s.is_nodule for s in samples], dtype=torch.float32),
        "malignancy": torch.tensor([s.malignancy for s in samples], dtype=torch.float32),
        "type": torch.tensor([max(s.type_index, 0) for s in samples], dtype=torch.int64),
    }

    def next_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.from_numpy(rng.choice(len(samples), size=min(cfg.batch, len(samples)), replace=False))
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
            "mined_candidates": mined_counts(mined),
            **history,
        },
    )


def mined_counts(mined: Mapping[str, Sequence[MinedCandidate]] | None) -> dict[str, int] | None:
    """How many mined candidates hit a nodule and how many are false positives."""
    if mined is None:
        return None
    every = [c for cands in mined.values() for c in cands]
    return {
        "hits": sum(c.nodule is not None for c in every),
        "false_positives": sum(c.nodule is None for c in every),
    }


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory() -> bool:
    """Have glibc keep freed buffers of up to 32 MB in the heap for the next step to reuse.

    A training step frees and reallocates the same activation-sized buffers; by default glibc
    returns them to the system and every step pays the page faults again (a fifth of the
    detector's CPU time went to the kernel). Measured on 2 cores: 1.26 -> 0.97 s per detector
    step. Returns False (and changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 32 << 20),
            (_M_TRIM_THRESHOLD, 1 << 30),
            (_M_TOP_PAD, 256 << 20),
        )
    )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (elsewhere it is emulated, and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # Private probes of the CPU's instruction set; missing in another torch build means "no".
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def effective_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what a ``TrainConfig.precision`` means on ``device``."""
    try:
        chosen = TrainPrecision(precision)
    except ValueError:
        names = ", ".join(TrainPrecision)
        raise ValueError(f"precision must be one of {names}, got {precision!r}") from None
    if chosen is TrainPrecision.AUTO:
        chosen = TrainPrecision.BF16 if native_bf16(device) else TrainPrecision.FP32
    return chosen.value


def _fit(
    net: nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, Any]],
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    cfg: TrainConfig,
    log: Log,
    name: str,
) -> dict[str, Any]:
    """AdamW with a cosine schedule on ``cfg.device``; returns the checkpoint's training record
    (loss history, seconds, device, precision, and the code version the run started from).

    In bf16 only the network's forward pass runs under autocast: the loss is taken on float32
    logits and the optimiser keeps float32 weights, so no loss scaling is needed (step times:
    export/README.md).

    The network ends on the CPU, in eval mode, so checkpoints never hold device tensors.
    """
    version = code_version()  # before training: the tree may change during a long run
    reuse_freed_memory()
    device = torch.device(cfg.device)
    precision = effective_precision(cfg.precision, device)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    net.train()
    losses: list[float] = []
    every = max(50, cfg.steps // 40)
    started = time.monotonic()
    for step in range(1, cfg.steps + 1):
        x, target = next_batch()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(_to(x, device))
        loss = loss_fn(out.float(), _to(target, device))
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % every == 0 or step == cfg.steps:
            recent = float(np.mean(losses[-every:]))
            log(f"{name} step {step}/{cfg.steps} loss {recent:.4f} ({time.monotonic() - started:.0f} s)")
    net.to("cpu").eval()
    return {"loss_history": [float(np.mean(losses[i : i + every])) for i in range(0, len(losses), every)],
            "train_seconds": time.monotonic() - started, "device": _device_name(device),
            "precision": precision, "code_version": version}  # fmt: skip


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
