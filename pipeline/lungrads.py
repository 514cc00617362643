"""Lung-RADS v2022 baseline categories from nodule size and type.

Thresholds (mean diameter in mm, rounded to 0.1 mm, as Lung-RADS measures):

| type | 2 | 3 | 4A | 4B |
| --- | --- | --- | --- | --- |
| solid | < 6; juxtapleural smooth < 10 | 6 to < 8 | 8 to < 15 | >= 15 |
| part-solid | total < 6 | total >= 6, solid part < 6 | solid part 6 to < 8 | solid part >= 8 |
| ground-glass | < 30 | >= 30 | | |

Calcified (benign) nodules are category 1; a category 3, 4A or 4B nodule with suspicious
features (spiculation) is 4X; a study takes its most suspicious nodule's category, 1 with no
nodule, and 0 when the exam is incomplete. Both the synthetic ground truth and the screening
job's suggestions come from this one function.
"""

from __future__ import annotations

from collections.abc import Iterable

CATEGORY_ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")
NOT_SCREENABLE = "0"


def nodule_category(
    nodule_type: str,
    diameter_mm: float,
    solid_diameter_mm: float,
    *,
    juxtapleural_smooth: bool = False,
    suspicious: bool = False,
) -> str:
    """Lung-RADS v2022 baseline category of one nodule."""
    d = round(diameter_mm, 1)
    s = round(solid_diameter_mm, 1)
    if nodule_type == "calcified":
        return "1"
    if nodule_type == "solid":
        if (juxtapleural_smooth and d < 10) or d < 6:
            cat = "2"
        elif d < 8:
            cat = "3"
        elif d < 15:
            cat = "4A"
        else:
            cat = "4B"
    elif nodule_type == "part_solid":
        if d < 6:
            cat = "2"
        elif s < 6:
            cat = "3"
        elif s < 8:
            cat = "4A"
        else:
            cat = "4B"
    elif nodule_type == "ground_glass":
        cat = "2" if d < 30 else "3"
    else:
        raise ValueError(f"unknown nodule type {nodule_type!r}")
    if suspicious and cat in ("3", "4A", "4B"):
        cat = "4X"
    return cat


def study_category(categories: Iterable[str]) -> str:
    """The most suspicious category of a study's nodules; "1" when it has none."""
    return max(categories, key=CATEGORY_ORDER.index, default="1")


def category_rank(category: str) -> int:
    """Higher is more suspicious (for ordering a worklist)."""
    return CATEGORY_ORDER.index(category)
