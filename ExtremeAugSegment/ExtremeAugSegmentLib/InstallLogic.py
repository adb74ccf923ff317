"""Python dependencies on first use, with the user's consent, on the main thread — never at import.

Slicer bundles numpy and SimpleITK (its SimpleITK has Slicer's own IO and must not be replaced), so only
what the engine adds is installed, and only what the step needs: segmenting needs onnxruntime alone;
training also needs torch, onnx, tqdm and matplotlib. torch comes through the PyTorch extension's
PyTorchUtils, which picks the build that matches the machine's CUDA (pip's default torch is CPU-only on
Windows and may not match the CUDA on Linux): without that extension the user is offered to install it
from the Extensions Manager and restart (what SlicerNNUnet does), plain pip only if they decline.
onnxruntime-gpu is chosen when a CUDA GPU is present, else onnxruntime; the rest comes from pip.
A package installed below the engine's floor (extremeaug.common.requirements) is upgraded the same way.
A package already imported in this process before the installation cannot be replaced in place: then
Slicer must restart. One the installer imports itself (PyTorchUtils' installTorch ends with `import torch`)
is the new one, and needs no restart.
"""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Callable, List, Optional, Protocol

from extremeaug.common.requirements import MINIMUM, installed_version, requirement, too_old

PIP_MODULES = ("onnx", "tqdm", "matplotlib")   # torch and onnxruntime are chosen per machine, see installPlan
NEEDED = ("torch", "onnxruntime", *PIP_MODULES)


class Purpose(str, Enum):
    """What the packages are for: the Segment buttons run the ONNX model only."""
    SEGMENT = "segment"
    TRAIN = "train"

    @property
    def modules(self):
        return ("onnxruntime",) if self is Purpose.SEGMENT else NEEDED


@dataclass(frozen=True)
class Step:
    module: str        # the import name it provides
    how: str           # "pytorchutils" or "pip"
    requirement: str   # what is installed


class Confirm(Protocol):
    def __call__(self, question: str) -> bool: ...


def missingModules(find: Callable[[str], object] = importlib.util.find_spec, purpose: Purpose = Purpose.TRAIN
                   ) -> List[str]:
    return [name for name in purpose.modules if find(name) is None]


def outdatedModules(version: Callable[[str], Optional[str]] = installed_version) -> List[str]:
    """Installed packages older than the engine's floor, as 'name version (needs >= floor)'."""
    return [f"{name} {version(name)} (needs >= {MINIMUM[name]})" for name in NEEDED if too_old(name, version(name))]


def modulesToInstall(find: Callable[[str], object] = importlib.util.find_spec,
                     version: Callable[[str], Optional[str]] = installed_version,
                     purpose: Purpose = Purpose.TRAIN) -> List[str]:
    """Missing or too old: what `ensure` installs for the purpose, in NEEDED's order."""
    stale = {name for name in purpose.modules if find(name) is not None and too_old(name, version(name))}
    return [name for name in purpose.modules if find(name) is None or name in stale]


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


# a one-node ONNX model (y = Identity(x)): enough for onnxruntime to load its CUDA provider, or fail to
IDENTITY_ONNX = "CAg6OwoQCgF4EgF5IghJZGVudGl0eRIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAN"
CUDA_PROBE = (
    "import base64, onnxruntime as ort; "
    f"s = ort.InferenceSession(base64.b64decode('{IDENTITY_ONNX}'), "
    "providers=['CUDAExecutionProvider', 'CPUExecutionProvider']); print(s.get_providers()[0])")


def cudaSessionWorks(python: str = sys.executable) -> bool:
    """Whether onnxruntime, as installed now, really runs a session on CUDA. `onnxruntime-gpu` lists the
    CUDA provider even when its CUDA/cuDNN libraries do not load, and then silently runs on the CPU; a
    fresh process is asked, because this one may hold an older onnxruntime."""
    result = subprocess.run([python, "-c", CUDA_PROBE], capture_output=True, text=True, timeout=300)
    return result.returncode == 0 and result.stdout.strip() == "CUDAExecutionProvider"


PYTORCH_EXTENSION_QUESTION = (
    "Training needs PyTorch. The PyTorch extension installs the build that matches this computer's GPU "
    "(plain pip gives a CPU-only build on Windows). Install the PyTorch extension now? 3D Slicer then "
    "restarts; click Train again afterwards.\n\n(Cancel: install torch with pip instead.)")


class InstallLogic:
    def __init__(self, confirm: Confirm, pipInstall: Optional[Callable[[str], None]] = None,
                 log: Callable[[str], None] = print,
                 installExtension: Optional[Callable[[str], bool]] = None,
                 cudaWorks: Callable[[], bool] = cudaSessionWorks):
        self.confirm, self.log = confirm, log
        self.pipInstall, self.installExtension, self.cudaWorks = pipInstall, installExtension, cudaWorks
        self.needsRestart = False

    def ensure(self, purpose: Purpose = Purpose.TRAIN) -> bool:
        """True when every dependency of the purpose is importable (after installing, if the user agrees);
        False when the user declined or Slicer must restart first. Install errors propagate with pip's
        message."""
        needed = modulesToInstall(purpose=purpose)
        if not needed:
            return True
        importedBefore = set(sys.modules)
        torchUtils = self._torchUtils()
        if "torch" in needed and torchUtils is None and self.confirm(PYTORCH_EXTENSION_QUESTION):
            self.log("installing the PyTorch extension from the Extensions Manager...")
            if not self._installExtension("PyTorch"):   # also what Slicer's own "install?" answered No gives
                self.log("the PyTorch extension was not installed; install it from View > Extensions Manager, "
                         "or click Train again and choose Cancel to install torch with pip")
                return False
            self.needsRestart = True
            return False
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
                if step.requirement.startswith("onnxruntime-gpu") and not self.cudaWorks():
                    self.log("onnxruntime-gpu cannot load its CUDA libraries here: installing the CPU build instead")
                    self._pip(f"onnxruntime>={MINIMUM['onnxruntime']}", uninstall="onnxruntime-gpu")
            if step.module in importedBefore:
                self.needsRestart = True
        importlib.invalidate_caches()
        still = modulesToInstall(purpose=purpose)
        if still and not self.needsRestart:
            raise RuntimeError(f"still missing or too old after installation: {', '.join(still)}; restart 3D Slicer "
                               "and retry")
        self.log("dependencies installed" + ("; restart 3D Slicer to use them" if self.needsRestart else ""))
        return True

    def _pip(self, requirement: str, uninstall: Optional[str] = None) -> None:
        if self.pipInstall is not None:
            if uninstall:
                self.pipInstall(f"uninstall {uninstall}")
            self.pipInstall(requirement)
            return
        import slicer
        if uninstall:
            slicer.util.pip_uninstall(uninstall)
        slicer.util.pip_install(requirement)

    def _installExtension(self, name: str) -> bool:
        if self.installExtension is not None:
            return self.installExtension(name)
        import slicer
        manager = slicer.app.extensionsManagerModel()
        install = getattr(manager, "installExtensionFromServer", None)   # Slicer >= 5.6: installs, then restarts
        if install is not None:
            return bool(install(name, True, False))
        return bool(manager.downloadAndInstallExtensionByName(name, True, True))

    @staticmethod
    def _torchUtils():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils.PyTorchUtilsLogic()
