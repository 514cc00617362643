"""Property-based geometry: slice order, direction signs and spacing never change the volume."""

from __future__ import annotations

import itertools

import fsspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.volume import load_volume

A, B = 4, 3  # voxels along patient x (L) and y (P)
X0, Y0, Z0 = -50.0, 20.0, -200.0
_counter = itertools.count()


def physical(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The value of the physical voxel (x index a, y index b, slice k)."""
    return (a + 7 * b + 31 * k + 5).astype(np.int16)


def write_variant(write_series, fs, *, sx: int, sy: int, count: int, px: float, py: float, dz: float, order):
    """Write the same physical volume with row/column directions (sx, 0, 0)/(0, sy, 0), files in ``order``."""
    r, c = np.mgrid[0:B, 0:A]
    a = c if sx > 0 else A - 1 - c
    b = r if sy > 0 else B - 1 - r
    start = (X0 if sx > 0 else X0 + (A - 1) * px, Y0 if sy > 0 else Y0 + (B - 1) * py)
    positions = [(*start, Z0 + k * dz) for k in range(count)]
    urls = write_series(
        f"memory://geom/{next(_counter)}",
        fs=fs,
        positions=[positions[k] for k in order],
        orientation=(sx, 0, 0, 0, sy, 0),
        pixel_spacing=(py, px),
        rows=B,
        cols=A,
        pixels=lambda i: physical(a, b, order[i]),
    )
    return load_volume(urls, fs=fs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(2, 6),
    signs=st.tuples(st.sampled_from([-1, 1]), st.sampled_from([-1, 1])),
    spacing=st.tuples(*[st.floats(0.3, 5.0).map(lambda v: round(v, 3))] * 3),
    data=st.data(),
)
def test_any_order_sign_and_spacing_give_the_same_volume(write_series, count, signs, spacing, data) -> None:
    px, py, dz = spacing
    fs = fsspec.filesystem("memory")
    order = data.draw(st.permutations(range(count)))
    reference = write_variant(
        write_series, fs, sx=1, sy=1, count=count, px=px, py=py, dz=dz, order=range(count)
    )
    variant = write_variant(
        write_series, fs, sx=signs[0], sy=signs[1], count=count, px=px, py=py, dz=dz, order=order
    )
    np.testing.assert_array_equal(variant.array, reference.array)
    np.testing.assert_allclose(variant.affine, reference.affine, atol=1e-6)
    assert variant.spacing == reference.spacing
    np.testing.assert_allclose(variant.spacing, (px, py, dz), rtol=1e-6)
    # voxel (i, j, k) sits where the physical voxel of that value is: check the far corner
    far = variant.affine @ np.array([A - 1, B - 1, count - 1, 1.0])
    np.testing.assert_allclose(far[:3], (-X0, -Y0, Z0 + (count - 1) * dz), atol=1e-6)
    assert variant.array[A - 1, B - 1, count - 1] == physical(np.array(0), np.array(0), count - 1) - 1024
