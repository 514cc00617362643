"""A picture for people: axial, coronal and sagittal slices through a nodule.

Top row: whole slices with a marker; bottom row: 60 mm zoom around the nodule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synth.dicom import SeriesVolume, read_series


def _thin_series_dir(study_dir: Path) -> Path:
    """The thin axial series folder of a written study (falls back to the thickest-sampled one)."""
    best = None
    for d in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        n = len(list(d.glob("*.dcm")))
        if best is None or n > best[0]:
            best = (n, d)
    if best is None:
        raise ValueError(f"no series folders in {study_dir}")
    return best[1]


def _truth_centre(study_dir: Path) -> tuple[float, float, float] | None:
    """The largest nodule's centre from ``truth.parquet`` next to the study, if any."""
    path = study_dir.parent / "truth.parquet"
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(path).to_pylist() if r["study_dir"] == study_dir.name]
    if not rows:
        return None
    r = max(rows, key=lambda r: r["diameter_mm"])
    return (r["center_x_mm"], r["center_y_mm"], r["center_z_mm"])


def write_preview(
    source: Path | SeriesVolume,
    out_png: Path,
    center_mm: tuple[float, float, float] | None = None,
    *,
    window: tuple[float, float] = (-600.0, 1500.0),
    title: str = "",
) -> Path:
    """Write a PNG with axial/coronal/sagittal slices through ``center_mm``.

    ``source`` is a study folder (its thin series is read; the centre defaults to the
    largest nodule in ``../truth.parquet``) or an already read :class:`SeriesVolume`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(source, SeriesVolume):
        vol = source
    else:
        study_dir = Path(source)
        vol = read_series(_thin_series_dir(study_dir))
        if center_mm is None:
            center_mm = _truth_centre(study_dir)
        title = title or study_dir.name
    hu = vol.hu
    if center_mm is None:
        k, r, c = (s // 2 for s in hu.shape)
    else:
        k, r, c = (round(v) for v in vol.to_voxel(center_mm))
    k, r, c = (int(np.clip(v, 0, s - 1)) for v, s in zip((k, r, c), hu.shape, strict=True))
    dz = float(np.linalg.norm(vol.ipp[-1] - vol.ipp[0]) / max(len(vol.ipp) - 1, 1))
    dr, dc = vol.spacing
    # display superior up: slices are sorted along the normal; flip when that runs inferior
    normal = np.cross(vol.row_dir, vol.col_dir)
    up = normal[2] >= 0
    views = [
        (hu[k], (c, r), dr / dc),
        (hu[:, r, :][::-1] if up else hu[:, r, :], (c, hu.shape[0] - 1 - k if up else k), dz / dc),
        (hu[:, :, c][::-1] if up else hu[:, :, c], (r, hu.shape[0] - 1 - k if up else k), dz / dr),
    ]
    lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    fig, axes = plt.subplots(2, 3, figsize=(13, 9), dpi=90)
    names = ("axial", "coronal", "sagittal")
    half = 30.0
    for n, ((img, (x, y), aspect), name) in enumerate(zip(views, names, strict=True)):
        ax = axes[0, n]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.plot([x], [y], marker="o", mfc="none", mec="red", ms=18)
        ax.set_title(name)
        ax.axis("off")
        colsp = dc if n < 2 else dr
        rowsp = dr if n == 0 else dz
        hx, hy = int(half / colsp), int(half / rowsp)
        crop = img[max(0, y - hy) : y + hy + 1, max(0, x - hx) : x + hx + 1]
        ax = axes[1, n]
        ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_title(f"{name}, 60 mm zoom")
        ax.axis("off")
    fig.suptitle(f"{title}  SYNTHETIC DATA  (W {window[1]:g} / L {window[0]:g})")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
