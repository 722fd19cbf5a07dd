"""Stage 2's model: the frozen network of stage 1 (or of stage 3, to re-estimate), and the swap
passes that gather MA's evidence.

Each train video i is paired with partners j that share no class with it. The frozen model reads
the original (a_i, v_i), the visual-swapped (a_i, v_j) and the audio-swapped (a_j, v_i) inputs: if
a weak label c holds only while the ORIGINAL audio is present, the visual track never showed c, and
vice versa. Which labels to drop, given that evidence, is an estimator's call (estimators.py).
"""
import os
from collections import namedtuple

import numpy as np
import torch

from avvp.checkpoints import fold_dir, load_checkpoint, load_model_strict
from avvp.errors import AVVPError
from avvp.model import MMIL_Net
from avvp.predict import predict

Frozen = namedtuple("Frozen", "net checkpoint path")
Evidence = namedtuple("Evidence", "filenames labels partners orig vis_swapped aud_swapped present")
# labels (N, C) weak; partners (K, N); orig / vis_swapped / aud_swapped: {"audio_prob", "visual_prob"}
# (N, C), the swapped ones the mean over the K partners; present: None, or the (audio, visual) (N, C)
# bool dense truth of the split


def stage1_hint(folds=1):
    """What to run when stage 1's checkpoint (or its --folds models) is missing."""
    flags = "--mode train" + (f" --folds {folds}" if folds > 1 else "")
    return (f"run stage 1 first: cd ../step1_train_base_model && python main_avvp.py {flags} "
            "(or point --model_save_dir / --checkpoint at its checkpoint)")


def load_frozen(path, device, hint=None):
    """A stage-1 (or stage-3) network in eval mode, weights loaded strictly, gradients off."""
    ckpt = load_checkpoint(path, hint=hint)
    net = MMIL_Net(frame_pool=ckpt.get("arch", {}).get("frame_pool", "early")).to(device)
    load_model_strict(net, ckpt, path)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Frozen(net, ckpt, path)


def load_models(model_save_dir, checkpoint, folds, device):
    """--folds 1: the one model at model_save_dir/checkpoint; K: the K fold models of stage 1 (or 3)
    --folds K, model_save_dir/fold<k>of<K>/checkpoint. A list of Frozen."""
    if folds == 1:
        paths = [os.path.join(model_save_dir, checkpoint)]
    else:
        paths = [os.path.join(fold_dir(model_save_dir, k, folds), checkpoint) for k in range(1, folds + 1)]
    models = [load_frozen(p, device, stage1_hint(folds)) for p in paths]
    for m in models:
        print(f"stage 2: loaded {m.path} (stage {m.checkpoint.get('stage')}, epoch {m.checkpoint.get('epoch')})")
    return models


def mean_of(runs):
    """The mean over runs of predict's outputs: {key: (N, C)} (the mean of one run is that run)."""
    return {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}


@torch.no_grad()
def swap_probs(net, split, partners, batch_size, rows=None):
    """Video-level audio/visual probs (N, C) for the original, visual-swapped and audio-swapped inputs.

    partners (K, N): K partners per video; the swapped probs are the mean over the K swaps (K=1:
    the released single swap), which averages out how much one partner happens to suppress c.
    rows: None, or the videos (R,) to read (their partners come from the whole split): (R, C) probs.
    """
    keys = ("audio_prob", "visual_prob")  # the estimators read these alone
    orig = predict(net, split, batch_size, keys=keys, rows=rows)
    swapped = []
    for kind in ("visual", "audio"):
        runs = [predict(net, split, batch_size, swap=(p, kind), keys=keys, rows=rows) for p in partners]
        swapped.append(mean_of(runs))
    return orig, swapped[0], swapped[1]


def fold_owner(models, split):
    """(N,) the index of the fold model that never trained on each video of the split; each
    checkpoint's fold -> heldout names its videos, which must cover the split once."""
    row = {name: i for i, name in enumerate(split.filenames)}
    owner = np.full(len(split), -1)
    for j, m in enumerate(models):
        heldout = m.checkpoint.get("fold", {}).get("heldout")
        if heldout is None:
            raise AVVPError(f"{m.path}: not a fold model of stage 1 or 3 --folds (no held-out videos recorded)")
        for name in heldout:
            i = row.get(name)
            if i is None or owner[i] >= 0:
                why = "is not in the train split" if i is None else "is held out of two fold models"
                raise AVVPError(f"{m.path}: held-out video {name} {why} ({split.path}); rerun its stage with --folds "
                                f"on this train split")
            owner[i] = j
    if (owner < 0).any():
        raise AVVPError(f"{split.path}: train video {split.filenames[int(np.argmax(owner < 0))]} is held out of no "
                        f"fold model; rerun its stage with --folds on this train split")
    return owner


def swap_evidence(models, split, partners, batch_size, out_of_fold=False, present=None):
    """The Evidence of a split. out_of_fold: each video read by the fold model blind to it (models:
    the K fold models); else every video by models[0]."""
    if not out_of_fold:
        probs = swap_probs(models[0].net, split, partners, batch_size)
    else:
        owner = fold_owner(models, split)
        probs = None
        for j, m in enumerate(models):
            rows = np.flatnonzero(owner == j)
            part = swap_probs(m.net, split, partners, batch_size, rows=rows)
            if probs is None:
                probs = tuple({k: np.zeros((len(split),) + v.shape[1:], v.dtype) for k, v in d.items()} for d in part)
            for full, d in zip(probs, part):
                for k, v in d.items():
                    full[k][rows] = v
    return Evidence(split.filenames, split.labels, partners, *probs, present)
