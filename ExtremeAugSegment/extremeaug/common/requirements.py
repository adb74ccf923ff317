"""The lowest version of each dependency the engine runs on: the one list that pyproject.toml repeats
(a test checks they agree) and the 3D Slicer module's installer checks installed packages against.

torch 2.1 is the floor: export picks the TorchScript exporter the way each torch accepts it
(export.torchscript_exporter), and the suite runs on torch 2.1.2 (docs/results.md says when).
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

MINIMUM = {"numpy": "1.22", "SimpleITK": "2.2", "torch": "2.1", "onnx": "1.14", "onnxruntime": "1.16",
           "tqdm": "4.60", "matplotlib": "3.5"}
# where a package ships under more than one distribution name (the GPU build of onnxruntime)
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml")}


def version_tuple(text: str) -> Tuple[int, ...]:
    """The release numbers of a version string: '2.5.1+cu124' -> (2, 5, 1), '1.16.0rc1' -> (1, 16, 0)."""
    numbers = []
    for part in text.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.group() != part:
            break
    return tuple(numbers)


def installed_version(module: str) -> Optional[str]:
    """The installed distribution's version for an import name, None when it is not installed."""
    from importlib import metadata

    for name in DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def too_old(module: str, version: Optional[str]) -> bool:
    return version is not None and version_tuple(version) < version_tuple(MINIMUM[module])


def requirement(module: str) -> str:
    return f"{module}>={MINIMUM[module]}"
