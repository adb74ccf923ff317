"""The one rule for a mean over cases (project versions and the experiment grid alike): values that are
undefined (an infinite distance, e.g. the HD95 of an empty prediction, or a missing score) are counted
beside the mean, never dropped silently. Kept free of numpy and SimpleITK, so records can import it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Mean:
    value: Optional[float]   # mean of the finite values; None when there is none
    n: int                   # how many finite values went in
    undefined: int = 0

    def format(self, spec: str = ".3f", unit: str = "") -> str:
        text = "-" if self.value is None else f"{format(self.value, spec)}{unit}"
        return text + (f" ({self.undefined} undefined)" if self.undefined else "")


def mean(values: Sequence[Optional[float]]) -> Mean:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return Mean(sum(finite) / len(finite) if finite else None, len(finite), len(values) - len(finite))
