"""Patches, stitching, candidates and measurements on constructed volumes."""

from __future__ import annotations

import numpy as np
import pytest

from export.networks import DETECTOR_SPEC
from pipeline.analysis import region_of
from pipeline.patches import flip_averaged, plan_patches, sliding_window
from pipeline.postprocess import (
    Candidate,
    crop_around,
    equivalent_diameter,
    extract_candidates,
    non_maximum_suppression,
    ras_to_lps,
)
from pipeline.preprocess import Preprocessed, lung_box, lung_region


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_stitching_an_identity_model_returns_the_input(overlap: float) -> None:
    a = np.random.default_rng(0).uniform(0.01, 0.99, size=(70, 50, 40)).astype(np.float32)
    grid = plan_patches(a.shape, (32, 32, 32), overlap, crop=(slice(5, 65), slice(0, 50), slice(3, 40)))
    probs = sliding_window(a, grid, lambda bs: [_logit(b) for b in bs], batch_size=3, in_flight=2)
    np.testing.assert_allclose(probs[5:65, :, 3:], a[5:65, :, 3:], atol=1e-4)
    assert probs[:5].max() == 0.0  # outside the crop nothing is predicted


def test_volume_smaller_than_a_patch_is_padded() -> None:
    a = np.full((20, 20, 10), 0.3, dtype=np.float32)
    grid = plan_patches(a.shape, (32, 32, 32), 0.25)
    assert len(grid.windows) == 1 and grid.padded_shape == (32, 32, 32)
    probs = sliding_window(a, grid, lambda bs: [_logit(b) for b in bs], batch_size=1)
    np.testing.assert_allclose(probs, 0.3, atol=1e-4)


def test_test_time_flips_average_each_copy_flipped_back_in_one_call() -> None:
    batches = [np.random.default_rng(i).uniform(size=(2, 1, 6, 5, 4)).astype(np.float32) for i in range(3)]
    ramp = np.arange(6, dtype=np.float32)[:, None, None]  # a model that is not mirror-symmetric
    calls: list[int] = []

    def predict_many(bs: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(bs))
        return [b + ramp for b in bs]

    got = flip_averaged(predict_many, [(), (0,)])(batches)
    assert calls == [6]  # every copy of every batch in flight together
    # Flipped back, the ramp and its mirror average to its middle value; unflipped they would not.
    for b, out in zip(batches, got, strict=True):
        np.testing.assert_allclose(out, b + 2.5, atol=1e-6)
    assert flip_averaged(predict_many, []) is predict_many


def test_test_time_flips_average_a_classifiers_vectors_as_they_are() -> None:
    batches = [np.random.default_rng(i).uniform(size=(3, 1, 6, 5, 4)).astype(np.float32) for i in range(2)]

    def corner(bs: list[np.ndarray]) -> list[np.ndarray]:  # a per-crop score: the first voxel
        return [b[:, :, 0, 0, 0] for b in bs]

    got = flip_averaged(corner, [(), (0,), (0, 2)], spatial_output=False)(batches)
    for b, out in zip(batches, got, strict=True):
        assert out.shape == (3, 1)
        expected = (b[:, :, 0, 0, 0] + b[:, :, -1, 0, 0] + b[:, :, -1, 0, -1]) / 3
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def _sphere(shape: tuple[int, int, int], center: tuple[float, float, float], radius_vox: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)))
    return (dist <= radius_vox).astype(np.float32)


def test_candidates_are_measured_in_millimetres() -> None:
    spacing = (1.5, 1.5, 1.5)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-100.0, -50.0, 20.0)
    shape = (60, 60, 60)
    image = np.full(shape, 0.1, dtype=np.float32) + 0.6 * _sphere(shape, (20, 30, 30), 4.0)
    probs = 0.95 * _sphere(shape, (20, 30, 30), 4.0) + 0.7 * _sphere(shape, (45, 45, 45), 2.0)
    pre = Preprocessed(image, affine, spacing)
    cands = extract_candidates(probs, pre, DETECTOR_SPEC, threshold=0.5)
    assert [round(c.score, 2) for c in cands] == [0.95, 0.7]
    big = cands[0]
    np.testing.assert_allclose(big.center_ijk, (20, 30, 30), atol=1e-6)
    np.testing.assert_allclose(big.center_ras(pre), (-100 + 30, -50 + 45, 20 + 45))
    expected_d = equivalent_diameter(float(_sphere(shape, (20, 30, 30), 4.0).sum()) * 1.5**3)
    assert big.diameter_mm == pytest.approx(expected_d)
    assert 10.0 < big.diameter_mm < 13.5  # a sphere of radius 4 voxels of 1.5 mm
    assert big.solid_diameter_mm == pytest.approx(big.diameter_mm)  # all of it is above -300 HU


NMS_CASES = (
    # second centre (voxels of 1 mm), its score, how many survive
    ((20.0, 20.0, 24.0), 0.6, 1),  # inside the 10 mm nodule's radius: suppressed
    ((20.0, 20.0, 26.0), 0.6, 2),  # outside both radii: kept
    ((20.0, 20.0, 24.0), 0.95, 1),  # better score wins, the other is suppressed
)


@pytest.mark.parametrize(("center", "score", "survivors"), NMS_CASES)
def test_nms_keeps_the_best_of_overlapping_candidates(
    center: tuple[float, float, float], score: float, survivors: int
) -> None:
    big = Candidate((20.0, 20.0, 20.0), 0.9, 523.0, 10.0, 10.0)
    other = Candidate(center, score, 4.0, 2.0, 2.0)
    kept = non_maximum_suppression([big, other], (1.0, 1.0, 1.0))
    assert len(kept) == survivors
    assert kept[0].score == max(0.9, score)


def test_crop_pads_outside_the_volume() -> None:
    a = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    crop = crop_around(a, (0, 5, 9), (4, 4, 4), fill=-1.0)
    assert crop.shape == (4, 4, 4)
    assert crop[0, 0, 0] == -1.0 and crop[2, 2, 2] == a[0, 5, 9]


def test_ras_lps_flip_is_its_own_inverse() -> None:
    p = np.array([[1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(ras_to_lps(p), [[-1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(ras_to_lps(ras_to_lps(p)), p)


def test_lung_region_covers_the_lungs_and_a_margin_not_the_body() -> None:
    shape = (80, 80, 40)
    image = np.zeros(shape, dtype=np.float32)  # air outside the body: 0 = -1000 HU
    image[10:70, 10:70, :] = 0.75  # body, soft tissue
    image[20:38, 20:60, 5:35] = 0.1  # right lung
    image[42:60, 20:60, 5:35] = 0.1  # left lung
    pre = Preprocessed(image, np.eye(4), (1.5, 1.5, 1.5))
    region = lung_region(pre, DETECTOR_SPEC, margin_mm=3.0)
    assert region[25, 30, 20] and region[50, 30, 20]  # inside each lung
    assert region[39, 30, 20]  # between them, within the margin of both
    assert not region[15, 15, 2] and not region[0, 0, 0]  # body wall far from the lungs, outside air
    assert region.sum() < 1.5 * ((image == 0.1).sum())


def test_lung_region_keeps_the_centre_of_a_mass_inside_the_lung() -> None:
    shape = (80, 80, 60)
    image = np.zeros(shape, dtype=np.float32)
    image[5:75, 5:75, :] = 0.75
    image[10:70, 10:70, 5:55] = 0.1  # one wide lung
    image += 0.65 * _sphere(shape, (40, 40, 30), 12.0)  # a solid 36 mm mass well inside it
    pre = Preprocessed(image, np.eye(4), (1.5, 1.5, 1.5))
    region = lung_region(pre, DETECTOR_SPEC, margin_mm=3.0)
    # The air threshold alone leaves the mass out; it is 18 mm from air, beyond any margin.
    assert region[40, 40, 30]
    assert not region[7, 7, 30]  # the body wall stays outside


def test_a_volume_without_lungs_is_boxed_whole_and_its_findings_still_get_a_zone() -> None:
    pre = Preprocessed(np.full((20, 20, 20), 0.5, dtype=np.float32), np.eye(4), (1.0, 1.0, 1.0))
    box = lung_box(pre, DETECTOR_SPEC)
    assert box == (slice(0, 20), slice(0, 20), slice(0, 20))
    assert region_of((5.0, 10.0, 15.0), box) == "right upper lung zone"
