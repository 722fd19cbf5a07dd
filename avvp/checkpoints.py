"""Checkpoints: write atomically, read with one-line errors, load weights strictly."""
import os

import torch

from . import llp
from .errors import AVVPError
from .files import atomic_torch_save


def fold_dir(model_save_dir, k, folds):
    """Where stage 1 --folds writes fold model k (1-based) of `folds`, and stage 2 --folds reads it."""
    return os.path.join(model_save_dir, f"fold{k}of{folds}")


def save_checkpoint(path, state, run_args, epoch, metrics, stage, extra=None):
    """A plain dict, written atomically with host tensors (a GPU run's checkpoint loads on a machine
    without CUDA): the trainer's state (model, optimizer, scheduler, rng), the run's flags
    (run_args), the network's shape, the metrics so far, and extra entries."""
    arch = {"num_classes": llp.NUM_CLASSES, "d_model": 512, "frame_pool": run_args.get("frame_pool", "early")}
    ckpt = {"stage": stage, "epoch": epoch, "args": run_args, "arch": arch, "metrics": metrics, **state,
            **(extra or {})}
    atomic_torch_save(_to_host(ckpt), path)


def _to_host(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_host(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_host(v) for v in obj)
    return obj


def load_checkpoint(path, hint=None):
    if not os.path.isfile(path):
        where = path if os.path.isabs(path) else f"{path} (= {os.path.abspath(path)})"
        raise AVVPError(f"{where}: checkpoint not found" + (f"; {hint}" if hint else ""))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise AVVPError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise AVVPError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    return ckpt


def load_model_strict(model, ckpt, path):
    """Load weights strictly; an architecture mismatch is a one-line error naming the checkpoint."""
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError) as e:  # TypeError: 'model' is not a state dict at all
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:3])
        raise AVVPError(f"{path}: architecture does not match this model ({detail[:300]})") from None


def load_into(model, path, hint=None):
    """Read the checkpoint at `path` and load its weights strictly into `model`; returns the checkpoint."""
    ckpt = load_checkpoint(path, hint)
    load_model_strict(model, ckpt, path)
    return ckpt
