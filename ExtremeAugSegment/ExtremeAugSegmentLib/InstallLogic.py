"""Python dependencies on first use, with the user's consent, on the main thread — never at import.

Slicer bundles numpy and SimpleITK (its SimpleITK has Slicer's own IO and must not be replaced), so only
what the engine adds is installed: torch through the PyTorch extension's PyTorchUtils, which picks the
build that matches the machine's CUDA (pip's default torch is a multi-GB build that may not match), else
pip; onnxruntime-gpu when a CUDA GPU is present, else onnxruntime; onnx, tqdm and matplotlib from pip.
A package installed below the engine's floor (extremeaug.requirements) is upgraded the same way.
A package already imported in this process cannot be replaced in place: then Slicer must restart.
"""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

from extremeaug.requirements import MINIMUM, installed_version, requirement, too_old

PIP_MODULES = ("onnx", "tqdm", "matplotlib")   # torch and onnxruntime are chosen per machine, see installPlan
NEEDED = ("torch", "onnxruntime", *PIP_MODULES)


@dataclass(frozen=True)
class Step:
    module: str        # the import name it provides
    how: str           # "pytorchutils" or "pip"
    requirement: str   # what is installed


class Confirm(Protocol):
    def __call__(self, question: str) -> bool: ...


def missingModules(find: Callable[[str], object] = importlib.util.find_spec) -> List[str]:
    return [name for name in NEEDED if find(name) is None]


def outdatedModules(version: Callable[[str], Optional[str]] = installed_version) -> List[str]:
    """Installed packages older than the engine's floor, as 'name version (needs >= floor)'."""
    return [f"{name} {version(name)} (needs >= {MINIMUM[name]})" for name in NEEDED if too_old(name, version(name))]


def modulesToInstall(find: Callable[[str], object] = importlib.util.find_spec,
                     version: Callable[[str], Optional[str]] = installed_version) -> List[str]:
    """Missing or too old: what `ensure` installs, in NEEDED's order."""
    stale = {name for name in NEEDED if find(name) is not None and too_old(name, version(name))}
    return [name for name in NEEDED if find(name) is None or name in stale]


def cudaAvailable() -> bool:
    """A CUDA GPU the engine could use: torch says so when it is installed, else an NVIDIA driver is there."""
    if importlib.util.find_spec("torch") is not None:
        import torch
        return bool(torch.cuda.is_available())
    return shutil.which("nvidia-smi") is not None


def installPlan(modules: List[str], hasPyTorchUtils: bool, cuda: bool) -> List[Step]:
    """What to install (or upgrade), torch first (onnxruntime's choice may depend on it)."""
    steps = []
    if "torch" in modules:
        steps.append(Step("torch", "pytorchutils" if hasPyTorchUtils else "pip", requirement("torch")))
    if "onnxruntime" in modules:
        package = "onnxruntime-gpu" if cuda else "onnxruntime"
        steps.append(Step("onnxruntime", "pip", f"{package}>={MINIMUM['onnxruntime']}"))
    steps += [Step(m, "pip", requirement(m)) for m in PIP_MODULES if m in modules]
    return steps


def describePlan(steps: List[Step]) -> str:
    lines = [f"- {s.requirement}" + (" (through the PyTorch extension)" if s.how == "pytorchutils" else "")
             for s in steps]
    return ("ExtremeAugSegment needs these Python packages (not installed yet, or older than it runs on):\n" +
            "\n".join(lines) +
            "\n\nThis downloads from the internet and may take several minutes (torch is large). Install now?")


class InstallLogic:
    def __init__(self, confirm: Confirm, pipInstall: Optional[Callable[[str], None]] = None,
                 log: Callable[[str], None] = print):
        self.confirm, self.log = confirm, log
        self.pipInstall = pipInstall
        self.needsRestart = False

    def ensure(self) -> bool:
        """True when every dependency is importable (after installing, if the user agrees); False when the
        user declined. Install errors propagate with pip's message."""
        needed = modulesToInstall()
        if not needed:
            return True
        torchUtils = self._torchUtils()
        steps = installPlan(needed, torchUtils is not None, cudaAvailable())
        if not self.confirm(describePlan(steps)):
            self.log("installation declined; training and segmentation need these packages")
            return False
        for step in steps:
            self.log(f"installing {step.requirement}...")
            if step.how == "pytorchutils":
                if torchUtils.installTorch(askConfirmation=False,
                                           torchVersionRequirement=f">={MINIMUM['torch']}") is None:
                    raise RuntimeError("the PyTorch extension could not install torch; install it from the "
                                       "PyTorch module, then try again")
            else:
                self._pip(step.requirement)
            if step.module in sys.modules:
                self.needsRestart = True
        importlib.invalidate_caches()
        still = modulesToInstall()
        if still and not self.needsRestart:
            raise RuntimeError(f"still missing or too old after installation: {', '.join(still)}; restart 3D Slicer "
                               "and retry")
        self.log("dependencies installed" + ("; restart 3D Slicer to use them" if self.needsRestart else ""))
        return True

    def _pip(self, requirement: str) -> None:
        if self.pipInstall is None:
            import slicer
            slicer.util.pip_install(requirement)
        else:
            self.pipInstall(requirement)

    @staticmethod
    def _torchUtils():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()
