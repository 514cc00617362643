"""Classifier crops on the classifier's own grid, resampled from the HU volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from export.networks import CLASSIFIER_SPEC, DETECTOR_SPEC
from pipeline.analysis import AnalysisConfig, analyze, classify
from pipeline.postprocess import Candidate, crop_around
from pipeline.preprocess import crop_at, lung_box, preprocess, same_grid
from pipeline.volume import Volume

SMALL = CLASSIFIER_SPEC.model_copy(update={"patch_size": (16, 16, 16)})
# Axis-aligned, mirrored and permuted voxel -> RAS affines of a 0.7 x 0.7 x 1.25 mm scan.
AFFINES = (
    np.diag([0.7, 0.7, 1.25, 1.0]),
    np.array([[-0.7, 0, 0, 100], [0, -0.7, 0, 50], [0, 0, 1.25, -30], [0, 0, 0, 1]], dtype=float),
    np.array([[0, 0.7, 0, 10], [-0.7, 0, 0, 5], [0, 0, -1.25, 3], [0, 0, 0, 1]], dtype=float),
)


def _volume(affine: np.ndarray, seed: int = 0) -> Volume:
    """Smooth noise from about -1400 to +600 HU, so the window clips at both ends."""
    g = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(120, 110, 70)), 2)
    hu = ((g - g.mean()) / g.std() * 500.0 - 400.0).astype(np.float32)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(hu, affine, spacing, tuple(affine[:3, 3]))  # type: ignore[arg-type]


@pytest.mark.parametrize("affine", AFFINES, ids=("ras", "mirrored", "permuted"))
def test_crop_at_matches_a_crop_of_the_preprocessed_volume(affine: np.ndarray) -> None:
    vol = _volume(affine)
    pre = preprocess(vol, SMALL)
    centre = np.array(pre.array.shape) // 2 + (3, -2, 1)
    expected = crop_around(pre.array, centre, SMALL.patch_size)
    got = crop_at(vol, pre.voxel_to_ras(centre)[0], SMALL)
    assert 0.2 < expected.mean() < 0.8  # neither window end dominates
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_crop_at_samples_the_specs_own_spacing_and_pads_with_the_border() -> None:
    affine = AFFINES[0]
    hu = np.full((120, 110, 70), -900.0, dtype=np.float32)
    idx = np.indices(hu.shape).astype(float)
    centre_ijk = np.array([60.0, 55.0, 35.0])
    dist = np.sqrt((((idx.T - centre_ijk) * (0.7, 0.7, 1.25)) ** 2).sum(axis=-1)).T
    hu[dist <= 3.0] = 0.0  # a solid 6 mm sphere
    vol = Volume(hu, affine, (0.7, 0.7, 1.25), (0.0, 0.0, 0.0))
    fine = SMALL.model_copy(update={"target_spacing_mm": (0.5, 0.5, 0.5)})
    crop = crop_at(vol, centre_ijk * (0.7, 0.7, 1.25), fine)
    inside = crop > (-450.0 + 1000.0) / 1400.0  # halfway between lung and sphere
    # The sphere's volume (113 mm^3) in voxels of 0.125 mm^3, within the boundary's blur.
    assert inside.sum() * 0.5**3 == pytest.approx(4 / 3 * np.pi * 27, rel=0.15)
    assert crop[8, 8, 8] == pytest.approx(1000.0 / 1400.0)
    corner = crop_at(vol, (-50.0, -50.0, -50.0), fine)  # wholly outside: the border's value
    np.testing.assert_allclose(corner, 100.0 / 1400.0)


class _Recorder:
    """A runner that records the batches and answers zeros of the classifier's output size."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run_many(self, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.extend(batches)
        return [np.zeros((len(b), 6), dtype=np.float32) for b in batches]


def test_a_classifier_on_another_grid_gets_crops_resampled_from_the_volume() -> None:
    vol = _volume(AFFINES[1], seed=1)
    pre = preprocess(vol, DETECTOR_SPEC)
    fine = CLASSIFIER_SPEC.model_copy(update={"target_spacing_mm": (0.75, 0.75, 0.75)})
    assert not same_grid(DETECTOR_SPEC, fine) and same_grid(DETECTOR_SPEC, CLASSIFIER_SPEC)
    cand = Candidate((30.2, 25.7, 40.1), 0.9, 100.0, 5.0, 5.0)
    box = lung_box(pre, DETECTOR_SPEC)
    runner = _Recorder()
    (finding,) = classify(pre, [cand], fine, runner, AnalysisConfig(), box, vol)
    unflipped = runner.batches[0][0, 0]  # the first copy is the crop as it is
    np.testing.assert_allclose(unflipped, crop_at(vol, cand.center_ras(pre), fine))
    assert finding.nodule_probability == pytest.approx(0.5)
    with pytest.raises(ValueError, match="HU volume"):
        analyze(pre, DETECTOR_SPEC, fine, runner)
