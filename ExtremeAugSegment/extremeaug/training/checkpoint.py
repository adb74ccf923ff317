"""Checkpoints and weights on disk: written whole or not at all, read with weights_only=True."""
from __future__ import annotations

import io
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import torch

from ..common.config import TrainConfig, changed_settings
from ..common.errors import ExtremeAugError
from ..common.files import write_bytes
from ..networks.model import ResUNet
from .dataset import Case

CHECKPOINT, WEIGHTS, ONNX_FILE, HISTORY = "checkpoint.pt", "model.pt", "model.onnx", "history.json"


def save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(buffer.getvalue(), path)


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files surface as many exception types
        raise ExtremeAugError(f"{path}: not a readable extremeaug checkpoint ({type(e).__name__})") from None


def resume_state(out: Path, resume: bool, have_cases: bool, asked: TrainConfig) -> Optional[dict]:
    """The checkpoint in `out` to continue from (its settings and cases win: a setting `asked` differently, other
    than the batch size, is refused rather than ignored), or None for a fresh run."""
    ckpt = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise ExtremeAugError(f"--out {out} is a file; name a folder for the model")
    if resume:
        if not ckpt.exists():
            raise ExtremeAugError(f"--resume: {ckpt} does not exist")
        state = load(ckpt)
        changed = changed_settings(TrainConfig, asked, TrainConfig.stored(state["config"]),
                                   [f.name for f in fields(TrainConfig) if f.name != "batch_size"])
        if changed:
            raise ExtremeAugError(f"--resume continues the run in {out} with its own settings: {', '.join(changed)} "
                                  "cannot change (--batch-size and the run's options can)")
        return state
    if out.exists() and any((out / f).exists() for f in (CHECKPOINT, WEIGHTS, ONNX_FILE)):
        raise ExtremeAugError(f"{out} already holds a model; pass --resume or choose another --out")
    if not have_cases:
        raise ExtremeAugError("no training scans given")
    return None


def load_weights(path: str | Path) -> ResUNet:
    """Rebuild the network from model.pt (state dict, loaded with weights_only=True)."""
    blob = load(Path(path))
    return network(int(blob["width"]), blob["state_dict"])


def network(width: int, state: dict) -> ResUNet:
    """The network of a state dict (its input channels and structures read from the weights), in eval mode."""
    net = ResUNet(width, in_channels=int(state["down.0.body.0.weight"].shape[1]),
                  classes=int(state["head.weight"].shape[0]))
    net.load_state_dict(state)
    return net.eval()


def portable_case(case: Case, folder: Path) -> dict:
    """A case with its files relative to the checkpoint's folder, so a moved (or copied) project or run
    folder resumes on its own files; absolute where no relative path exists (another Windows drive)."""
    def relative(path: str) -> str:
        try:
            return os.path.relpath(Path(path).resolve(), folder.resolve())
        except ValueError:
            return str(Path(path).resolve())
    return dict(asdict(case), image=relative(case.image), label=case.label and relative(case.label))


def located_case(case: dict, state: dict, folder: Path) -> Case:
    if state.get("case_paths") != "relative":   # a checkpoint from before: absolute paths
        return Case(**case)
    return Case(**dict(case, image=str((folder / case["image"]).resolve()),
                       label=case["label"] and str((folder / case["label"]).resolve())))
