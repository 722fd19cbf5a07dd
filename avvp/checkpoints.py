"""Checkpoints: write atomically, read safely (weights only), load weights strictly.

Two kinds of file load wherever the project reads a model:
- the project's own checkpoint: a plain dict of tensors and plain values ('model', 'optimizer',
  'rng', 'args', 'metrics', ...);
- a released HAN / MA model: the plain `state_dict` of the released `MMIL_Net` (HAN's
  `models/MMIL_Net.pt`, MA's stage checkpoints). Its one attention layer sits under
  `hat_encoder.layers.0.` and it holds modules the released forward never calls (`audio_encoder`,
  `visual_encoder`, `cmt_encoder`, the encoder's `norm1` / `norm2`; MA's also `t_att`, `t_att2`,
  `fc1`, `fc2`): the layer is mapped onto this project's `hat_encoder`, the rest is named once and
  left out.

Every file is read with torch.load(weights_only=True): a file that needs arbitrary unpickling is
refused with a one-line error and nothing in it runs. The one exception allowed is numpy arrays
(old checkpoints of this project stored numpy's RNG state as one), which rebuild data, not code.
"""
import importlib
import os
import pickle
import warnings

import numpy as np
import torch

from . import llp
from .errors import AVVPError, one_line
from .files import atomic_torch_save

RELEASED_LAYER = "hat_encoder.layers.0."  # the released Encoder's one (cloned) HAN layer
# what rebuilding a numpy array from a pickle needs (numpy 1.x and 2.x spell the module differently)
NUMPY_ARRAY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                       "numpy.ndarray", "numpy.dtype")
NUMPY_DTYPES = (np.uint32, np.int64, np.float32, np.float64)  # their dtype classes are unpickled too


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


def _global(name):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _unreadable(path, e):
    """A truncated or foreign file's error, on one short line."""
    return AVVPError(f"{path}: cannot read checkpoint ({type(e).__name__}: {one_line(e, 200)})")


def read_weights_only(path):
    """torch.load(path, weights_only=True) onto the CPU. A file that needs more than tensors, plain
    values and numpy arrays is refused with a one-line AVVPError; nothing in it is run."""
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the error below says more
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # truncated or foreign file
        raise _unreadable(path, e) from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format: an old-style pickle, which may hold anything
        names = ["(not torch's zip format)"]
    unsafe = [n for n in names if n not in NUMPY_ARRAY_GLOBALS]
    if unsafe:
        raise AVVPError(f"{path}: refused: loading it would run arbitrary code ({', '.join(unsafe[:3])}); only "
                        "weights are read, and nothing in the file was run")
    try:
        allowed = [_global(n) for n in names] + [type(np.dtype(t)) for t in NUMPY_DTYPES]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(path, e) from None


def is_released_state_dict(obj):
    """A plain state_dict of the released HAN / MA MMIL_Net (maybe saved from nn.DataParallel)."""
    return (isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())
            and any(k.endswith(RELEASED_LAYER + "cm_attn.in_proj_weight") for k in obj))


def from_released(state):
    """The released state_dict with its keys as this project names them: 'module.' (DataParallel)
    dropped, hat_encoder.layers.0.X -> hat_encoder.X. The released Encoder's own norm1 / norm2
    (never applied: its norm is None) would land on the layer's norm1 / norm2, so they are set
    aside under 'released_encoder.*'; keys of modules this network lacks stay as they are.
    load_model_strict leaves both out."""
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        if k.startswith(RELEASED_LAYER):
            k = "hat_encoder." + k[len(RELEASED_LAYER):]
        elif k.startswith("hat_encoder."):
            k = "released_encoder." + k[len("hat_encoder."):]
        out[k] = v
    return out


def load_checkpoint(path, hint=None):
    """The checkpoint at `path` as a dict with a 'model' state dict; a released HAN / MA state_dict
    comes back as {'model': its mapped weights, 'released': True}."""
    if not os.path.isfile(path):
        where = path if os.path.isabs(path) else f"{path} (= {os.path.abspath(path)})"
        raise AVVPError(f"{where}: checkpoint not found" + (f"; {hint}" if hint else ""))
    ckpt = read_weights_only(path)
    if is_released_state_dict(ckpt):
        return {"model": from_released(ckpt), "released": True, "stage": "released HAN/MA model", "epoch": None}
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise AVVPError(f"{path}: neither a checkpoint of this project (no 'model' entry) nor a released "
                        "HAN/MA MMIL_Net state_dict")
    return ckpt


def _module_of(key):
    """'cmt_encoder.layers.0.linear1.weight' -> 'cmt_encoder'; 'released_encoder.norm1.bias' -> 'hat_encoder.norm1'."""
    parts = key.split(".")
    return "hat_encoder." + parts[1] if parts[0] == "released_encoder" else parts[0]


def load_model_strict(model, ckpt, path):
    """Load weights strictly; an architecture mismatch is a one-line error naming the checkpoint.
    A released checkpoint's modules this network does not have are left out, and named once."""
    state = ckpt["model"]
    if ckpt.get("released"):
        wanted = model.state_dict()
        unused = sorted({_module_of(k) for k in state if k not in wanted})
        state = {k: v for k, v in state.items() if k in wanted}
        print(f"note: {path}: released HAN/MA model; its attention layer hat_encoder.layers.0 is this network's "
              f"hat_encoder; modules the released forward never calls are left out: {', '.join(unused) or 'none'}")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:  # TypeError: 'model' is not a state dict at all
        raise AVVPError(f"{path}: architecture does not match this model ({one_line(e, 300)})") from None
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise AVVPError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); the run that "
                        "wrote it diverged")


def load_into(model, path, hint=None):
    """Read the checkpoint at `path` and load its weights strictly into `model`; returns the checkpoint."""
    ckpt = load_checkpoint(path, hint)
    load_model_strict(model, ckpt, path)
    return ckpt
