"""The label table: the structures a model learns, each with a name, colour, terminology and label value.

Free of numpy and SimpleITK, so that the project's records and a GUI's status calls stay light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .errors import ExtremeAugError

DEFAULT_NAME = "structure"
PALETTE = [(0.90, 0.62, 0.25), (0.50, 0.68, 0.50), (0.30, 0.50, 0.90), (0.86, 0.35, 0.35), (0.70, 0.50, 0.85),
           (0.90, 0.85, 0.35), (0.35, 0.80, 0.80), (0.60, 0.60, 0.60)]


@dataclass(frozen=True)
class Structure:
    """One structure a model segments: its name, colour (RGB 0..1), its terminology when the source had one
    (Slicer's `~`-separated DICOM code string) and the value it has in label maps."""
    name: str
    color: Tuple[float, float, float]
    terminology: Optional[str] = None
    value: int = 1

    def to_dict(self) -> dict:
        return {"value": self.value, "name": self.name, "color": [round(float(c), 4) for c in self.color],
                "terminology": self.terminology}

    @classmethod
    def from_dict(cls, d: dict) -> "Structure":
        return cls(str(d["name"]), tuple(float(c) for c in d["color"]), d.get("terminology"), int(d.get("value", 1)))


def default_structure(value: int = 1, index: int = 0, name: Optional[str] = None) -> Structure:
    return Structure(name or DEFAULT_NAME, PALETTE[index % len(PALETTE)], value=int(value))


def describe(labels: Sequence[Structure]) -> str:
    return ", ".join(f"{lab.value} {lab.name!r}" for lab in labels)


def parse_table(text: str, flag: str = "--labels") -> List[Structure]:
    """`name=value,...` (as `--label-names` and `project init --labels` take it) as a label table."""
    labels = []
    for i, item in enumerate(t for t in text.split(",") if t.strip()):
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ExtremeAugError(f"{flag}: {item.strip()!r} is not name=value with a value of 1 or more")
        labels.append(default_structure(int(value), i, name.strip()))
    check_table(labels)
    return labels


def check_table(labels: Sequence[Structure]) -> None:
    if not labels:
        raise ExtremeAugError("a label table needs at least one structure")
    for key in ("value", "name"):
        seen = [getattr(lab, key) for lab in labels]
        if len(set(seen)) != len(seen):
            raise ExtremeAugError(f"two structures share a {key}: {describe(labels)}")
    if max(lab.value for lab in labels) > 65535:
        raise ExtremeAugError("label values must be 65535 or less")
