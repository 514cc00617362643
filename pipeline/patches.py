"""Sliding-window patches in, a stitched probability map out (MONAI's patch geometry).

The same two functions serve the screening job (patches go to Triton) and evaluation (patches
go to PyTorch or ONNX Runtime), so a model is measured exactly as it is run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass
class PatchGrid:
    """Where the patches of one (cropped, padded) volume lie."""

    patch: tuple[int, int, int]
    windows: list[Box]
    padded_shape: tuple[int, int, int]
    crop: Box
    source_shape: tuple[int, int, int]


def plan_patches(
    shape: Sequence[int], patch: Sequence[int], overlap: float, crop: Box | None = None
) -> PatchGrid:
    """Patch windows covering ``crop`` of a volume of ``shape`` with the given overlap."""
    from monai.data.utils import dense_patch_slices  # lazily, as in pipeline.preprocess

    crop = crop or (slice(None),) * 3
    cropped = tuple(len(range(*s.indices(n))) for s, n in zip(crop, shape, strict=True))
    padded = tuple(max(c, p) for c, p in zip(cropped, patch, strict=True))
    interval = tuple(max(int(p * (1.0 - overlap)), 1) for p in patch)
    windows = [
        tuple(slice(int(s.start), int(s.stop)) for s in w)
        for w in dense_patch_slices(padded, tuple(patch), interval)
    ]
    return PatchGrid(tuple(patch), windows, padded, crop, tuple(shape))  # type: ignore[arg-type]


def crop_and_pad(array: np.ndarray, grid: PatchGrid, fill: float = 0.0) -> np.ndarray:
    """The region the grid covers, padded (with ``fill``) up to the patch size where smaller."""
    region = array[grid.crop]
    if region.shape == grid.padded_shape:
        return region
    out = np.full(grid.padded_shape, fill, dtype=array.dtype)
    out[tuple(slice(0, n) for n in region.shape)] = region
    return out


def iter_batches(
    region: np.ndarray, grid: PatchGrid, batch_size: int
) -> Iterator[tuple[list[Box], np.ndarray]]:
    """Channel-first patch batches ``(N, 1, *patch)`` with the windows they came from."""
    for start in range(0, len(grid.windows), batch_size):
        windows = grid.windows[start : start + batch_size]
        yield windows, np.stack([region[w] for w in windows])[:, None]


@dataclass
class Stitcher:
    """Gaussian-weighted average of overlapping patch logits (as MONAI's sliding window does)."""

    grid: PatchGrid
    _sum: np.ndarray = field(init=False)
    _weight: np.ndarray = field(init=False)
    _importance: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._sum = np.zeros(self.grid.padded_shape, dtype=np.float32)
        self._weight = np.zeros(self.grid.padded_shape, dtype=np.float32)
        from monai.data.utils import compute_importance_map

        importance = compute_importance_map(self.grid.patch, mode="gaussian", sigma_scale=0.125, device="cpu")
        self._importance = importance.numpy().astype(np.float32)

    def add(self, windows: Sequence[Box], logits: np.ndarray) -> None:
        """Accumulate a batch of patch outputs ``(N, 1, *patch)``."""
        for w, out in zip(windows, logits, strict=True):
            self._sum[w] += out[0] * self._importance
            self._weight[w] += self._importance

    def probabilities(self) -> np.ndarray:
        """Sigmoid of the stitched logits, placed back into the full volume's shape (0 outside)."""
        logits = self._sum / np.maximum(self._weight, 1e-6)
        region_shape = tuple(
            len(range(*s.indices(n))) for s, n in zip(self.grid.crop, self.grid.source_shape, strict=True)
        )
        probs = 1.0 / (1.0 + np.exp(-logits[tuple(slice(0, n) for n in region_shape)]))
        full = np.zeros(self.grid.source_shape, dtype=np.float32)
        full[self.grid.crop] = probs
        return full


PredictMany = Callable[[list[np.ndarray]], list[np.ndarray]]


def sliding_window(
    array: np.ndarray, grid: PatchGrid, predict_many: PredictMany, batch_size: int, in_flight: int = 4
) -> np.ndarray:
    """Stitched probabilities of ``array`` over ``grid``.

    ``predict_many`` gets up to ``in_flight`` batches at once, so a remote runner can keep that
    many requests in flight (Triton's dynamic batching then fills); memory holds at most that
    many batches of patches at a time.
    """
    region = crop_and_pad(array, grid)
    stitcher = Stitcher(grid)
    pending: list[tuple[list[Box], np.ndarray]] = []

    def flush() -> None:
        outputs = predict_many([batch for _, batch in pending])
        for (windows, _), out in zip(pending, outputs, strict=True):
            stitcher.add(windows, out)
        pending.clear()

    for item in iter_batches(region, grid, batch_size):
        pending.append(item)
        if len(pending) >= in_flight:
            flush()
    if pending:
        flush()
    return stitcher.probabilities()


def flip_averaged(
    predict_many: PredictMany, flips: Sequence[tuple[int, ...]], *, spatial_output: bool = True
) -> PredictMany:
    """``predict_many`` with test-time mirroring: each batch ``(N, C, *patch)`` also goes through
    flipped along each entry's spatial axes and the outputs are averaged (a model spec's
    ``test_time_flips``); a ``spatial_output`` (a segmentation map) is flipped back first, a
    per-input vector (a classifier's scores) is averaged as it is. All copies go out in one
    call, so a remote runner has them in flight together."""
    if not flips:
        return predict_many

    def mirror(batch: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return np.flip(batch, tuple(2 + a for a in axes)) if axes else batch

    def predict(batches: list[np.ndarray]) -> list[np.ndarray]:
        copies = [np.ascontiguousarray(mirror(b, axes)) for b in batches for axes in flips]
        outputs = iter(predict_many(copies))
        return [
            np.mean(
                [mirror(next(outputs), axes) if spatial_output else next(outputs) for axes in flips], axis=0
            )
            for _ in batches
        ]

    return predict
