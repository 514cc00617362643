"""Faults injected per study to test the pipeline's robustness.

Each fault has an exact name, the outcome the pipeline must reach (``"ok"`` or a
:class:`pipeline.errors.ReasonCode` value) and two hooks: :func:`plan_fault` changes the
series plans before writing, :func:`post_write_fault` changes the files afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ReasonCode
from synth.dicom import SeriesPlan, StudyMeta


@dataclass(frozen=True)
class Fault:
    """A fault kind: its name, expected pipeline outcome and what it does to the files."""

    name: str
    expected_outcome: str
    description: str


OK = "ok"

FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault(
            "missing_slice", ReasonCode.MISSING_SLICES.value, "one interior thin-series slice file removed"
        ),
        Fault(
            "duplicate_slices", OK, "some thin slices written twice: new SOPInstanceUID, same position/pixels"
        ),
        Fault(
            "uneven_spacing",
            ReasonCode.NONUNIFORM_SPACING.value,
            "a stretch of thin slices at 1.5x increment",
        ),
        Fault(
            "truncated_file", ReasonCode.TRUNCATED_FILE.value, "one interior thin file cut inside Pixel Data"
        ),
        Fault("non_dicom_file", OK, "a stray JPEG thumbnail in the thin series folder"),
        Fault(
            "non_ct", ReasonCode.NOT_CT.value, "every series is Modality MR with the MR Image Storage class"
        ),
        Fault(
            "gantry_tilt",
            ReasonCode.GANTRY_TILT.value,
            "thin series tilted: GantryDetectorTilt and oblique IOP",
        ),
        Fault("mixed_series", OK, "thin and thick series written into one folder"),
        Fault(
            "empty_uids",
            ReasonCode.MISSING_UID.value,
            "StudyInstanceUID and SeriesInstanceUID empty everywhere",
        ),
        Fault("thick_only", ReasonCode.THICK_SLICES.value, "only the localizer and the 5 mm series"),
    )
}
FAULT_NAMES: tuple[str, ...] = tuple(FAULTS)


def expected_outcome(fault: str | None) -> str:
    """``"ok"`` for a clean study, else the fault's expected outcome."""
    return OK if fault is None else FAULTS[fault].expected_outcome


def check_fault(fault: str | None) -> None:
    """Raise ValueError for an unknown fault name."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULT_NAMES)}")


def plan_fault(
    fault: str | None, meta: StudyMeta, series: list[SeriesPlan], rng: np.random.Generator
) -> tuple[StudyMeta, list[SeriesPlan], str]:
    """Apply the plan-time part of ``fault``; returns the new meta, plans and a detail string."""
    check_fault(fault)
    if fault is None:
        return meta, series, ""
    thin = next((s for s in series if s.role == "thin"), None)
    assert thin is not None
    n = len(thin.z_positions)
    detail = ""
    if fault == "missing_slice":
        k = int(rng.integers(n // 4, 3 * n // 4))
        thin.drop = {k}
        detail = f"thin slice index {k} (z={thin.z_positions[k]:.2f}) not written"
    elif fault == "duplicate_slices":
        ks = sorted(int(v) for v in rng.choice(np.arange(2, n - 2), size=3, replace=False))
        thin.duplicate = ks
        detail = f"thin slice indices {ks} written twice"
    elif fault == "uneven_spacing":
        zs = thin.z_positions
        dz = zs[1] - zs[0]
        a = int(rng.integers(n // 3, n // 2))
        m = 12
        new = list(zs[: a + 1])
        while len(new) < a + 1 + m:
            new.append(new[-1] + 1.5 * dz)
        while new[-1] + dz <= zs[-1] + 1e-6:
            new.append(new[-1] + dz)
        thin.z_positions = new
        detail = f"{m} increments of {1.5 * dz:g} mm after z={zs[a]:.2f} (nominal {dz:g} mm)"
    elif fault == "non_ct":
        for s in series:
            s.modality = "MR"
        detail = "Modality MR, MR Image Storage"
    elif fault == "gantry_tilt":
        thin.tilt_deg = float(rng.choice([-1, 1]) * rng.uniform(12, 22))
        detail = f"gantry tilt {thin.tilt_deg:.1f} degrees"
    elif fault == "mixed_series":
        thick = next(s for s in series if s.role == "thick")
        thin.dir_name = thick.dir_name
        thin.file_offset = len(thick.z_positions)
        detail = f"thin and thick series both in {thick.dir_name}"
    elif fault == "empty_uids":
        meta = StudyMeta(**{**meta.__dict__, "empty_uids": True})
        detail = "StudyInstanceUID and SeriesInstanceUID empty"
    elif fault == "thick_only":
        series = [s for s in series if s.role != "thin"]
        detail = "no thin series"
    return meta, series, detail


def post_write_fault(
    fault: str | None,
    thin_files: list[Path],
    pixel_bytes: dict[Path, int],
    thin_dir: Path | None,
    jpeg_source: np.ndarray | None,
    rng: np.random.Generator,
) -> str:
    """Apply the file-level part of ``fault`` after writing; returns a detail string."""
    if fault == "truncated_file":
        f = thin_files[int(rng.integers(len(thin_files) // 4, 3 * len(thin_files) // 4))]
        size = f.stat().st_size
        cut = size - pixel_bytes[f] // 2
        with f.open("r+b") as fh:
            fh.truncate(cut)
        return f"{f.name} truncated from {size} to {cut} bytes"
    if fault == "non_dicom_file" and thin_dir is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = thin_dir / "thumbnail.jpg"
        img = jpeg_source if jpeg_source is not None else np.zeros((64, 64))
        plt.imsave(path, np.clip((img + 1000) / 1400, 0, 1), cmap="gray", format="jpeg")
        return f"stray non-DICOM file {path.name}"
    return ""
