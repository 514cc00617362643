"""Series selection: one CT series per study, chosen by declarative rules.

In the spirit of MONAI Deploy's series selector: a :class:`RuleSet` is an ordered list of
:class:`Rule` conditions every candidate series must meet, and a list of preferences that rank the
series passing them all. A rule checks one series attribute (a DICOM keyword of the index, or a
derived one: ``coverage_mm``, ``slice_count``, ``slice_spacing_mm``, ``completeness``) for
equality, membership, a regex, a numeric range, ImageType tokens (``!LOCALIZER`` excludes), or the
slice orientation. Rules load from a dict or YAML (:func:`load_rules`).

When no series passes, the study fails with the reason of the rule at which the series that got
furthest stopped (rules run coarse to fine), so a study with only a 5 mm series and a localizer
fails ``THICK_SLICES`` and an MR-only study ``NOT_CT``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from pipeline.dicom_policy import CT_SOP_CLASSES, DEFAULT_POLICY, Policy, tolerate
from pipeline.errors import ReasonCode, SelectionError
from pipeline.geometry import slice_normal
from pipeline.index import OK, SURROGATE_PREFIX

_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
_RULE_ADVICE = "Check that the study holds a thin-slice axial chest CT series."
_FILE_ADVICE = "Copy the damaged file(s) of the series again from the archive."


@dataclass(frozen=True)
class Rule:
    """One condition on a series attribute; set exactly one of the condition fields.

    ``equals`` (value, or any of a list), ``regex`` (full match), ``min``/``max`` (inclusive
    numeric range), ``image_type`` (tokens that must all be present; ``!TOKEN`` must be absent),
    ``orientation`` (``axial``, ``coronal`` or ``sagittal``: the slice normal within
    ``max_angle_deg`` of that patient axis). ``reason`` is the study's failure reason when the
    best series stops at this rule.
    """

    name: str
    field: str = ""
    equals: Any = None
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    image_type: tuple[str, ...] = ()
    orientation: str | None = None
    max_angle_deg: float = 35.0
    reason: ReasonCode = ReasonCode.NO_SUITABLE_SERIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", ReasonCode(self.reason))
        object.__setattr__(self, "image_type", tuple(t.upper() for t in self.image_type))
        if self.orientation is not None and self.orientation not in _AXES:
            raise ValueError(f"rule {self.name!r}: orientation must be one of {sorted(_AXES)}")
        if self.orientation is None and not self.field:
            raise ValueError(f"rule {self.name!r} needs a 'field' (or an 'orientation')")

    def check(self, series: Mapping[str, Any]) -> str | None:
        """``None`` when ``series`` meets the rule, else a short explanation for a person."""
        if self.orientation is not None:
            return self._check_orientation(series.get("ImageOrientationPatient"))
        value = series.get(self.field)
        if value is None:
            return f"{self.field} is missing"
        if self.image_type:
            tokens = set(value)
            lacking = [t for t in self.image_type if not t.startswith("!") and t not in tokens]
            present = [t[1:] for t in self.image_type if t.startswith("!") and t[1:] in tokens]
            if lacking or present:
                return f"ImageType {'/'.join(value)} " + (f"lacks {lacking}" if lacking else f"has {present}")
        if self.equals is not None:
            allowed = self.equals if isinstance(self.equals, list | tuple) else [self.equals]
            if value not in allowed:
                return f"{self.field} is {value!r}, not {' or '.join(map(repr, allowed))}"
        if self.regex is not None and not re.fullmatch(self.regex, str(value)):
            return f"{self.field} {value!r} does not match {self.regex!r}"
        if self.min is not None and float(value) < self.min:
            return f"{self.field} {float(value):g} is below {self.min:g}"
        if self.max is not None and float(value) > self.max:
            return f"{self.field} {float(value):g} is above {self.max:g}"
        return None

    def _check_orientation(self, orientation: Sequence[float] | None) -> str | None:
        if not orientation or len(orientation) != 6:
            return "ImageOrientationPatient is missing"
        try:
            normal = slice_normal(tuple(orientation))
        except ValueError as exc:
            return str(exc)
        angle = math.degrees(math.acos(min(1.0, abs(float(normal[_AXES[str(self.orientation)]])))))
        if angle > self.max_angle_deg:
            return f"slices are {angle:.0f} degrees off {self.orientation} (limit {self.max_angle_deg:g})"
        return None


@dataclass(frozen=True)
class RuleSet:
    """Ordered ``rules`` every series must meet, then ``prefer`` rules ranking the survivors.

    Among survivors, more preferences met wins, then completeness (slices present / expected from
    the z-range), z-coverage, slice count, thinner slices, lower SeriesNumber.
    """

    name: str
    rules: tuple[Rule, ...]
    prefer: tuple[Rule, ...] = ()


DEFAULT_SCREENING_RULES = RuleSet(
    name="screening",
    rules=(
        Rule("CT", field="Modality", equals="CT", reason=ReasonCode.NOT_CT),
        Rule("original image, not a localizer", field="ImageType", image_type=("ORIGINAL", "!LOCALIZER")),
        Rule("axial slices", orientation="axial", max_angle_deg=35.0),
        Rule("slices at most 3 mm", field="SliceThickness", max=3.0, reason=ReasonCode.THICK_SLICES),
        Rule("chest z-coverage", field="coverage_mm", min=200.0, reason=ReasonCode.INSUFFICIENT_COVERAGE),
    ),
    prefer=(Rule("slices at most 2.5 mm", field="SliceThickness", max=2.5),),
)


def _rule_from_dict(raw: Mapping[str, Any]) -> Rule:
    known = {f.name for f in fields(Rule)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown rule keys {sorted(unknown)}; allowed: {sorted(known)}")
    data = dict(raw)
    if "image_type" in data:
        data["image_type"] = tuple(data["image_type"])
    return Rule(**data)


def load_rules(spec: Mapping[str, Any] | str | Path) -> RuleSet:
    """A :class:`RuleSet` from a dict or a YAML file with keys ``name``, ``rules``, ``prefer``."""
    if not isinstance(spec, Mapping):
        spec = yaml.safe_load(Path(spec).read_text())
    return RuleSet(
        name=str(spec.get("name", "custom")),
        rules=tuple(_rule_from_dict(r) for r in spec.get("rules", ())),
        prefer=tuple(_rule_from_dict(r) for r in spec.get("prefer", ())),
    )


@dataclass(frozen=True)
class Selection:
    """The series chosen for a study, its files, why the others were not, and QC notes."""

    study_key: str
    chosen: str
    files: tuple[str, ...]
    rejected: dict[str, str]
    notes: tuple[str, ...] = field(default=())


def _most_common(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def summarize_series(rows: Sequence[Mapping[str, Any]], policy: Policy, notes: list[str]) -> dict[str, Any]:
    """Series-level attributes (representative header values plus derived geometry) from its rows."""
    keys = list(rows[0])
    lists = {k for k in keys if any(isinstance(r.get(k), list) for r in rows)}
    summary: dict[str, Any] = {k: _most_common([r.get(k) for r in rows]) for k in keys if k not in lists}
    for key in lists - {"ImageType"}:
        summary[key] = next((r[key] for r in rows if r.get(key)), None)
    summary["ImageType"] = sorted({t.upper() for r in rows for t in (r.get("ImageType") or ())}) or None
    positions = sorted({round(p, 3) for r in rows for p in (r.get("slice_positions") or ())})
    steps = np.diff(positions)
    spacing = float(np.median(steps)) if len(steps) else None
    summary["slice_count"] = len(positions)
    summary["coverage_mm"] = positions[-1] - positions[0] if positions else 0.0
    summary["slice_spacing_mm"] = spacing
    summary["completeness"] = (
        len(positions) / (round(summary["coverage_mm"] / spacing) + 1) if spacing else float(bool(positions))
    )
    thicknesses = [r["SliceThickness"] for r in rows if r.get("SliceThickness")]
    summary["SliceThickness"] = statistics.median(thicknesses) if thicknesses else None
    if summary["SliceThickness"] is None and spacing and policy is not Policy.RAISE:
        tolerate(
            policy,
            ReasonCode.THICK_SLICES,
            "SliceThickness missing: using the slice spacing",
            notes,
            stage="select",
        )
        summary["SliceThickness"] = spacing
    inferable = summary.get("Modality") is None and summary.get("SOPClassUID") in CT_SOP_CLASSES
    if inferable and policy is not Policy.RAISE:
        tolerate(
            policy,
            ReasonCode.NOT_CT,
            "Modality missing: CT assumed from the SOP Class",
            notes,
            stage="select",
        )
        summary["Modality"] = "CT"
    summary["failed"] = [(r["url"], r["status"]) for r in rows if r["status"] != OK]
    return summary


def _progress(summary: Mapping[str, Any], rules: RuleSet) -> tuple[int, ReasonCode, str | None]:
    """How many rules the series passes before failing, that rule's reason, and why (None: all pass)."""
    for stage, rule in enumerate(rules.rules):
        why = rule.check(summary)
        if why is not None:
            return stage, rule.reason, f"{why} (rule '{rule.name}'). {_RULE_ADVICE}"
    if summary["failed"]:
        statuses = Counter(status for _, status in summary["failed"])
        status, count = statuses.most_common(1)[0]
        return len(rules.rules), ReasonCode(status), f"{count} file(s) failed with {status}. {_FILE_ADVICE}"
    return len(rules.rules) + 1, ReasonCode.NO_SUITABLE_SERIES, None


def _rank(summary: Mapping[str, Any], rules: RuleSet) -> tuple[Any, ...]:
    preferred = sum(rule.check(summary) is None for rule in rules.prefer)
    return (
        -preferred,
        -round(summary["completeness"], 3),
        -summary["coverage_mm"],
        -summary["slice_count"],
        summary["SliceThickness"] or math.inf,
        summary.get("SeriesNumber") or 0,
        summary["SeriesInstanceUID"],
    )


def _describe(summary: Mapping[str, Any]) -> str:
    number = summary.get("SeriesNumber")
    return f"series {number}" if number is not None else "a series without SeriesNumber"


def select_series(
    study_rows: pa.Table | Sequence[Mapping[str, Any]],
    rules: RuleSet = DEFAULT_SCREENING_RULES,
    *,
    policy: Policy | str = DEFAULT_POLICY,
) -> Selection:
    """Choose the series of one study to screen (``study_rows``: its index rows, any order).

    Returns a :class:`Selection`, or raises :class:`~pipeline.errors.SelectionError` with reason
    ``MISSING_UID``, ``NOT_CT``, ``THICK_SLICES``, ``INSUFFICIENT_COVERAGE``, ``NO_SUITABLE_SERIES``
    (or the file-level reason of the best series' broken files) and ``rejected`` per series.
    """
    rows = study_rows.to_pylist() if isinstance(study_rows, pa.Table) else list(study_rows)
    if not rows:
        raise ValueError("select_series needs the rows of one study; got none")
    key = str(rows[0].get("study_key") or "")
    policy = Policy(policy)
    if key.startswith(SURROGATE_PREFIX):
        raise SelectionError(
            ReasonCode.MISSING_UID,
            f"{len(rows)} file(s) have no StudyInstanceUID, so they cannot be safely grouped into a study; "
            "re-export the study from the archive with its UIDs.",
            rejected={},
            stage="select",
            study=key,
        )
    by_series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_series[row.get("SeriesInstanceUID") or ""].append(row)
    notes: list[str] = []
    rejected: dict[str, str] = {}
    candidates: list[dict[str, Any]] = []
    best = (-1, ReasonCode.MISSING_UID, "files without SeriesInstanceUID: re-export them with their UIDs.")
    for uid, members in sorted(by_series.items()):
        if not uid:
            rejected[""] = f"MISSING_UID: {len(members)} file(s) have no SeriesInstanceUID"
            continue
        summary = summarize_series(members, policy, notes)
        stage, reason, why = _progress(summary, rules)
        if why is None:
            candidates.append(summary)
            continue
        rejected[uid] = f"{reason}: {_describe(summary)}: {why}"
        if stage > best[0]:
            best = (stage, reason, f"{_describe(summary)}: {why}")
    if not candidates:
        raise SelectionError(
            best[1],
            f"No series of the study can be screened; the closest, {best[2]}",
            rejected=rejected,
            stage="select",
            study=key,
        )
    candidates.sort(key=lambda s: _rank(s, rules))
    chosen = candidates[0]
    for other in candidates[1:]:
        rejected[other["SeriesInstanceUID"]] = f"outranked by {_describe(chosen)} (rule set '{rules.name}')"
    files = tuple(r["url"] for r in by_series[chosen["SeriesInstanceUID"]])
    return Selection(key, chosen["SeriesInstanceUID"], files, rejected, tuple(dict.fromkeys(notes)))
