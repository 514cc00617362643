"""Acquisition: profiles, scan geometry, reconstruction kernels, noise and partial volume.

The clean volume lives on the thin series' grid; every written image is made from it by
:func:`axial_image` (slab average over the slice sensitivity profile = partial volume,
kernel blur or edge enhancement, correlated noise) or :func:`tilted_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synth.geometry import Grid

UNCOMPRESSED = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"

_VENDORS = (
    ("SIEMENS", "SOMATOM Synth", {"soft": "B30f", "sharp": "B60f"}),
    ("GE MEDICAL SYSTEMS", "Revolution Synth", {"soft": "STANDARD", "sharp": "LUNG"}),
    ("Philips", "Ingenuity Synth", {"soft": "B", "sharp": "L"}),
    ("TOSHIBA", "Aquilion Synth", {"soft": "FC08", "sharp": "FC52"}),
)


@dataclass(frozen=True)
class Profile:
    """A cohort profile: image matrix, geometry ranges and how much detail to draw."""

    name: str
    matrix: int
    fov_mm: tuple[float, float]
    thin_thickness_mm: tuple[float, ...]
    max_slices: int
    min_coverage_mm: float = 250.0
    thick_mm: float = 5.0
    nodule_mean: float = 1.6
    emphysema_probability: float = 0.3
    min_vessel_radius_mm: float = 0.6
    max_tree_segments: int = 1200
    min_airway_radius_mm: float = 1.0
    transfer_syntaxes: tuple[str, ...] = (UNCOMPRESSED, RLE_LOSSLESS, JPEG_LS_LOSSLESS)
    transfer_weights: tuple[float, ...] = (0.4, 0.3, 0.3)


PROFILES: dict[str, Profile] = {
    "screening": Profile("screening", 512, (320.0, 400.0), (1.0, 1.25), max_slices=340),
    "small": Profile(
        "small",
        128,
        (333.0, 384.0),
        (2.5,),
        max_slices=110,
        min_vessel_radius_mm=1.0,
        max_tree_segments=350,
        min_airway_radius_mm=1.8,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ValueError listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


@dataclass(frozen=True)
class Acquisition:
    """How one study was scanned and reconstructed."""

    grid: Grid  # clean-volume grid = thin recon grid (z ascending)
    kernel: str  # soft | sharp (thin recon)
    thin_thickness_mm: float
    thick_mm: float
    patient_position: str  # HFS | FFS
    transfer_syntax: str
    manufacturer: str
    model: str
    kernel_names: dict[str, str]
    kvp: float
    mas: float
    noise_thin: float
    noise_thick: float

    @property
    def fov_mm(self) -> float:
        return self.grid.spacing[0] * self.grid.shape[2]


def sample_acquisition(
    rng: np.random.Generator,
    profile: Profile,
    *,
    body_half_width: float,
    center_x: float,
    z_base: float,
    lung_height: float,
    size: float,
) -> Acquisition:
    """Choose FOV, slices, kernel, position, vendor and transfer syntax for one study."""
    lo, hi = profile.fov_mm
    fov = float(np.clip(2 * (body_half_width + abs(center_x)) + rng.uniform(20, 50), lo, hi))
    px = fov / profile.matrix
    thk = float(rng.choice(profile.thin_thickness_mm))
    top = rng.uniform(15, 30)
    bottom = rng.uniform(15, 30)
    cover = float(
        np.clip(lung_height + top + bottom, profile.min_coverage_mm, thk * (profile.max_slices - 1))
    )
    nz = int(np.ceil(cover / thk)) + 1
    z0 = z_base - bottom - max(0.0, cover - (lung_height + top + bottom)) / 2
    z0 = round(z0 / thk) * thk  # table positions on the increment
    origin = (-fov / 2 + px / 2, -fov / 2 + px / 2, float(z0))
    grid = Grid((nz, profile.matrix, profile.matrix), origin, (px, px, thk))
    kernel = str(rng.choice(["soft", "sharp"], p=[0.35, 0.65]))
    vendor, model, kernels = _VENDORS[int(rng.integers(len(_VENDORS)))]
    w = np.asarray(profile.transfer_weights, float)
    ts = str(rng.choice(profile.transfer_syntaxes, p=w / w.sum()))
    size_f = float(np.exp((size - 1.0) * 2.0))
    res_f = float(np.sqrt(0.7 / px))
    base = 20.0 if kernel == "soft" else 60.0
    return Acquisition(
        grid=grid,
        kernel=kernel,
        thin_thickness_mm=thk,
        thick_mm=profile.thick_mm,
        patient_position=str(rng.choice(["HFS", "FFS"], p=[0.8, 0.2])),
        transfer_syntax=ts,
        manufacturer=vendor,
        model=model,
        kernel_names=kernels,
        kvp=float(rng.choice([100.0, 120.0])),
        mas=float(rng.uniform(25, 60)),
        noise_thin=base * size_f * res_f / np.sqrt(thk),
        noise_thick=20.0 * size_f * res_f / np.sqrt(profile.thick_mm),
    )


def slab_weights(zs: np.ndarray, z: float, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of clean slices overlapping the slab ``z ± thickness/2`` (partial volume)."""
    dz = float(zs[1] - zs[0]) if len(zs) > 1 else thickness
    lo = np.maximum(zs - dz / 2, z - thickness / 2)
    hi = np.minimum(zs + dz / 2, z + thickness / 2)
    w = np.clip(hi - lo, 0, None)
    idx = np.flatnonzero(w > 1e-6)
    if len(idx) == 0:
        idx = np.array([int(np.argmin(np.abs(zs - z)))])
        return idx, np.ones(1)
    return idx, w[idx] / w[idx].sum()


def apply_kernel(img: np.ndarray, kernel: str) -> np.ndarray:
    """Reconstruction kernel: soft blurs; sharp blurs less and enhances edges (overshoot)."""
    if kernel == "soft":
        return ndimage.gaussian_filter(img, 0.7)
    base = ndimage.gaussian_filter(img, 0.35)
    return base + 0.5 * (base - ndimage.gaussian_filter(base, 1.4))


def noise_image(rng: np.random.Generator, shape: tuple[int, int], sd: float, kernel: str) -> np.ndarray:
    """Correlated Gaussian noise with standard deviation ``sd``: coarser grain for the soft kernel."""
    s = 1.0 if kernel == "soft" else 0.5
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), s)
    return n * np.float32(sd / (n.std() + 1e-6))


def finish(img: np.ndarray, grid: Grid, rng: np.random.Generator, kernel: str, sd: float) -> np.ndarray:
    """Kernel, noise, clipping to the stored range and -1024 outside the reconstruction circle."""
    out = apply_kernel(img, kernel) + noise_image(rng, img.shape, sd, kernel)
    ny, nx = img.shape
    yy, xx = np.ogrid[:ny, :nx]
    outside = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > (nx / 2) ** 2
    out[outside] = -1024
    return np.clip(out, -1024, 3071)


def axial_image(
    clean: np.ndarray,
    grid: Grid,
    z: float,
    thickness: float,
    kernel: str,
    sd: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One axial image (rows = +y, columns = +x) at table position ``z``, HU float32."""
    idx, w = slab_weights(grid.zs, z, thickness)
    img = np.tensordot(w.astype(np.float32), clean[idx], axes=(0, 0)).astype(np.float32)
    return finish(img, grid, rng, kernel, sd)


def tilted_image(
    clean: np.ndarray,
    grid: Grid,
    ipp: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    kernel: str,
    sd: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An image on an oblique plane (gantry tilt), sampled from the clean volume (linear)."""
    nr, nc = grid.shape[1], grid.shape[2]
    dx = grid.spacing[0]
    rr, cc = np.mgrid[:nr, :nc].astype(np.float32)
    pts = ipp[None, None, :] + cc[..., None] * dx * row_dir + rr[..., None] * dx * col_dir
    idx = grid.to_index(pts)
    img = ndimage.map_coordinates(clean, idx.transpose(2, 0, 1), order=1, mode="nearest").astype(np.float32)
    return finish(img, grid, rng, kernel, sd)


def localizer_image(clean: np.ndarray) -> np.ndarray:
    """An AP projection radiograph (rows = z descending, columns = +x) as stored values 0..4095."""
    proj = np.empty((clean.shape[0], clean.shape[2]), np.float32)
    for k in range(clean.shape[0]):
        proj[k] = np.clip(clean[k] + 1000.0, 0, None).sum(axis=0)
    proj = proj / max(float(proj.max()), 1.0) * 3000.0
    return np.clip(proj[::-1], 0, 4095).astype(np.uint16)
