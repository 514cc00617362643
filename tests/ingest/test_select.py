"""Series selection on index-like rows (no files needed): default rules, reasons, custom rules."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.dicom_policy import Policy
from pipeline.errors import ReasonCode, SelectionError
from pipeline.index import OK, SURROGATE_PREFIX
from pipeline.select import DEFAULT_SCREENING_RULES, Rule, load_rules, select_series

STUDY = "1.2.3"
ORIGINAL = ["ORIGINAL", "PRIMARY", "AXIAL"]
LOCALIZER = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"


def series(
    uid: str,
    *,
    count: int = 121,
    spacing: float = 2.5,
    thickness: float | None = None,
    modality: str | None = "CT",
    image_type: list[str] = ORIGINAL,
    orientation: list[float] | None = None,
    number: int = 2,
    drop: int = 0,
    status: str = OK,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
) -> list[dict[str, Any]]:
    """Index rows of one series; ``drop`` removes that many interior slices."""
    rows = []
    for i in range(count):
        if 0 < i <= drop:
            continue
        rows.append(
            {
                "url": f"/{uid}/{i}.dcm",
                "status": status if i == count // 2 else OK,
                "study_key": STUDY,
                "StudyInstanceUID": STUDY,
                "SeriesInstanceUID": uid,
                "SOPClassUID": sop_class,
                "Modality": modality,
                "SeriesNumber": number,
                "ImageType": image_type,
                "ImageOrientationPatient": orientation or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                "SliceThickness": spacing if thickness is None else thickness,
                "slice_positions": [i * spacing],
            }
        )
    return rows


THIN = series("thin", spacing=1.25, count=241)
THIN_3MM = series("thin3", spacing=3.0, count=101, number=4)
THICK = series("thick", spacing=5.0, count=61, number=3)
SCOUT = series("scout", count=1, image_type=LOCALIZER, number=1)

CHOSEN_CASES = [
    ("thin beats thick and localizer", THIN + THICK + SCOUT, "thin"),
    ("2.5 mm preferred over 3 mm", THIN_3MM + THIN, "thin"),
    ("3 mm allowed alone", THIN_3MM + THICK, "thin3"),
    ("complete beats incomplete", series("holes", spacing=1.25, count=241, drop=20) + THIN, "thin"),
    ("intact beats truncated file", series("cut", status=ReasonCode.TRUNCATED_FILE, number=5) + THIN, "thin"),
    ("tilted slices within 35 degrees", series("tilt", orientation=[1, 0, 0, 0, 0.94, -0.34]), "tilt"),
]


@pytest.mark.parametrize(("name", "rows", "chosen"), CHOSEN_CASES, ids=[c[0] for c in CHOSEN_CASES])
def test_chosen_series(name: str, rows: list[dict[str, Any]], chosen: str) -> None:
    selection = select_series(rows)
    assert selection.chosen == chosen
    assert set(selection.rejected) == {r["SeriesInstanceUID"] for r in rows} - {chosen}
    assert all(url.startswith(f"/{chosen}/") for url in selection.files)


FAILURE_CASES = [
    ("only thick and localizer", THICK + SCOUT, ReasonCode.THICK_SLICES, "above 3"),
    ("MR only", series("mr", modality="MR", sop_class=MR_CLASS), ReasonCode.NOT_CT, "not 'CT'"),
    ("localizer only", SCOUT, ReasonCode.NO_SUITABLE_SERIES, "LOCALIZER"),
    (
        "derived only",
        series("d", image_type=["DERIVED", "SECONDARY"]),
        ReasonCode.NO_SUITABLE_SERIES,
        "ORIGINAL",
    ),
    ("coronal", series("cor", orientation=[1, 0, 0, 0, 0, -1]), ReasonCode.NO_SUITABLE_SERIES, "off axial"),
    ("short coverage", series("short", count=20), ReasonCode.INSUFFICIENT_COVERAGE, "coverage_mm"),
    ("truncated file", series("cut", status=ReasonCode.TRUNCATED_FILE), ReasonCode.TRUNCATED_FILE, "failed"),
    ("no series UID", series(""), ReasonCode.MISSING_UID, "SeriesInstanceUID"),
]


@pytest.mark.parametrize(
    ("name", "rows", "reason", "match"), FAILURE_CASES, ids=[c[0] for c in FAILURE_CASES]
)
def test_study_failure_reasons(name: str, rows: list[dict[str, Any]], reason: ReasonCode, match: str) -> None:
    with pytest.raises(SelectionError, match=match) as info:
        select_series(rows)
    assert info.value.reason == reason
    assert info.value.stage == "select"
    assert set(info.value.rejected) == {r["SeriesInstanceUID"] for r in rows}


def test_study_without_uid_is_rejected_before_looking_at_series() -> None:
    rows = [dict(r, study_key=SURROGATE_PREFIX + "abc", StudyInstanceUID=None) for r in THIN]
    with pytest.raises(SelectionError, match="no StudyInstanceUID") as info:
        select_series(rows)
    assert info.value.reason == ReasonCode.MISSING_UID


MODALITY_POLICY_CASES = [(Policy.IGNORE, 0), (Policy.WARN, 1)]


@pytest.mark.parametrize(("policy", "notes"), MODALITY_POLICY_CASES)
def test_missing_modality_inferred_from_sop_class(policy: Policy, notes: int) -> None:
    selection = select_series(series("s", modality=None), policy=policy)
    assert selection.chosen == "s"
    assert len(selection.notes) == notes


def test_missing_modality_rejected_under_raise() -> None:
    with pytest.raises(SelectionError) as info:
        select_series(series("s", modality=None), policy=Policy.RAISE)
    assert info.value.reason == ReasonCode.NOT_CT


def test_rules_load_from_yaml(tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "name: lung-b\n"
        "rules:\n"
        "  - {name: CT, field: Modality, equals: CT, reason: NOT_CT}\n"
        "  - {name: not localizer, field: ImageType, image_type: ['!LOCALIZER']}\n"
        "  - {name: kernel, field: ConvolutionKernel, regex: 'B[0-9]+f', reason: NO_SUITABLE_SERIES}\n"
        "prefer:\n"
        "  - {name: thin, field: SliceThickness, max: 1.0}\n"
    )
    rules = load_rules(path)
    rows = [dict(r, ConvolutionKernel="B30f") for r in THICK] + [
        dict(r, ConvolutionKernel="B70f") for r in THIN
    ]
    rows += [dict(r, ConvolutionKernel="LUNG") for r in series("lung", spacing=0.5, count=9)]
    assert rules.rules[0].reason is ReasonCode.NOT_CT
    selection = select_series(rows, rules)
    assert selection.chosen == "thin"
    assert "does not match" in selection.rejected["lung"]
    assert "outranked" in selection.rejected["thick"]


RULE_CHECK_CASES = [
    (Rule("eq", field="Modality", equals=["CT", "PT"]), {"Modality": "PT"}, None),
    (Rule("eq", field="Modality", equals="CT"), {"Modality": "MR"}, "not 'CT'"),
    (Rule("range", field="SliceThickness", min=0.5, max=2.5), {"SliceThickness": 0.4}, "below 0.5"),
    (Rule("missing", field="BodyPartExamined", equals="CHEST"), {}, "missing"),
    (Rule("it", field="ImageType", image_type=("ORIGINAL", "!LOCALIZER")), {"ImageType": ["ORIGINAL"]}, None),
    (
        Rule("ax", orientation="axial", max_angle_deg=5),
        {"ImageOrientationPatient": [1, 0, 0, 0, 0.98, -0.17]},
        "10 degrees",
    ),
]


@pytest.mark.parametrize(("rule", "series_attrs", "expected"), RULE_CHECK_CASES)
def test_rule_check(rule: Rule, series_attrs: dict[str, Any], expected: str | None) -> None:
    result = rule.check(series_attrs)
    assert result is None if expected is None else expected in (result or "")


BAD_RULES = [
    ({"name": "x", "field": "Modality", "wrong": 1}, "unknown rule keys"),
    ({"name": "x"}, "needs a 'field'"),
    ({"name": "x", "orientation": "oblique"}, "orientation must be"),
]


@pytest.mark.parametrize(("raw", "match"), BAD_RULES)
def test_invalid_rules_are_explained(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_rules({"rules": [raw]})


def test_default_rules_are_ordered_coarse_to_fine() -> None:
    reasons = [r.reason for r in DEFAULT_SCREENING_RULES.rules]
    assert reasons[0] is ReasonCode.NOT_CT
    assert reasons[-2:] == [ReasonCode.THICK_SLICES, ReasonCode.INSUFFICIENT_COVERAGE]
