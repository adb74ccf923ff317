"""Records as JSON for programs: dataclasses become objects, enums their values, and a distance that is
undefined (infinite, e.g. HD95 of an empty prediction) becomes null rather than invalid JSON."""
from __future__ import annotations

import dataclasses
import json
import math
from enum import Enum


def plain(value):
    """A JSON-ready copy of records, enums, paths and numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def json_text(value, indent=None) -> str:
    return json.dumps(plain(value), indent=indent)
