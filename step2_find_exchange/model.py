"""Stage 2's model: the frozen stage-1 network, and the label-exchange rule of MA.

Modality-aware labels come from swapping one modality with an unrelated video (a partner that
shares no class): if a weak label c survives only while the ORIGINAL audio is present, the
visual track never showed c, and vice versa.
"""
import numpy as np
import torch

from avvp.checkpoints import load_checkpoint, load_model_strict
from avvp.errors import AVVPError
from avvp.model import MMIL_Net
from avvp.predict import predict


def stage1_hint(folds=1):
    """What to run when stage 1's checkpoint (or its --folds models) is missing."""
    flags = "--mode train" + (f" --folds {folds}" if folds > 1 else "")
    return (f"run stage 1 first: cd ../step1_train_base_model && python main_avvp.py {flags} "
            "(or point --model_save_dir / --checkpoint at its checkpoint)")


def load_frozen(path, args, device, folds=1):
    """The stage-1 (or stage-3) network in eval mode, weights loaded strictly. Returns (model, checkpoint)."""
    ckpt = load_checkpoint(path, hint=stage1_hint(folds))
    model = MMIL_Net(frame_pool=ckpt.get("arch", {}).get("frame_pool", args.frame_pool)).to(device)
    load_model_strict(model, ckpt, path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ckpt


def mean_of(runs):
    """The mean over runs of predict's outputs: {key: (N, C)} (the mean of one run is that run)."""
    return {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}


@torch.no_grad()
def swap_probs(model, split, partners, batch_size, rows=None):
    """Video-level audio/visual probs (N, C) for the original, visual-swapped and audio-swapped inputs.

    partners (K, N): K partners per video; the swapped probs are the mean over the K swaps (K=1:
    the released single swap), which averages out how much one partner happens to suppress c.
    rows: None, or the videos (R,) to read (their partners come from the whole split): (R, C) probs.
    """
    keys = ("audio_prob", "visual_prob")  # the exchange rule reads these alone
    orig = predict(model, split, batch_size, keys=keys, rows=rows)
    swapped = []
    for kind in ("visual", "audio"):
        runs = [predict(model, split, batch_size, swap=(p, kind), keys=keys, rows=rows) for p in partners]
        swapped.append(mean_of(runs))
    return orig, swapped[0], swapped[1]


def out_of_fold_probs(models, split, partners, batch_size):
    """swap_probs with each train video read by the fold model that never trained on it.

    models: [(model, checkpoint, path)] of stage 1 or 3 --folds K; each checkpoint's fold -> heldout
    names its videos, which must cover the split once. Returns swap_probs' three dicts (N, C).
    """
    row = {name: i for i, name in enumerate(split.filenames)}
    owner = np.full(len(split), -1)
    for j, (_, ckpt, path) in enumerate(models):
        heldout = ckpt.get("fold", {}).get("heldout")
        if heldout is None:
            raise AVVPError(f"{path}: not a fold model of stage 1 or 3 --folds (no held-out videos recorded)")
        for name in heldout:
            i = row.get(name)
            if i is None or owner[i] >= 0:
                why = "is not in the train split" if i is None else "is held out of two fold models"
                raise AVVPError(f"{path}: held-out video {name} {why} ({split.path}); rerun its stage with --folds "
                                f"on this train split")
            owner[i] = j
    if (owner < 0).any():
        raise AVVPError(f"{split.path}: train video {split.filenames[int(np.argmax(owner < 0))]} is held out of no "
                        f"fold model; rerun its stage with --folds on this train split")
    out = None
    for j, (model, _, _) in enumerate(models):
        rows = np.flatnonzero(owner == j)
        part = swap_probs(model, split, partners, batch_size, rows=rows)
        if out is None:
            out = tuple({k: np.zeros((len(split),) + v.shape[1:], v.dtype) for k, v in d.items()} for d in part)
        for full, d in zip(out, part):
            for k, v in d.items():
                full[k][rows] = v
    return out


def class_error_scale(prob, labels):
    """Per-class error rate of (prob > 0.5) against the weak labels over all videos, / its maximum.

    (N, C), (N, C) -> (C,); NaN everywhere when the model makes no error at all (then nothing is
    dropped, as in the released code, where the division gives NaN).
    """
    err = ((prob > 0.5) != (labels > 0)).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return err / err.max()


def exchange_rule(labels, orig, vis_swapped, aud_swapped, factor=0.5, error_scale="class", held_out=None):
    """MA's drop rule (METHOD.md section 4), vectorised.

    labels (N, C) weak labels; orig / vis_swapped / aud_swapped: dicts with 'audio_prob' and
    'visual_prob' (N, C) for the original, visual-swapped (a_i, v_j) and audio-swapped (a_j, v_i) inputs.
    Drop the VISUAL label c of video i if, with the audio swapped, both its visual and audio prob of c
    fall below factor * v_class[c]; drop the AUDIO label if, with the visual swapped, both fall below
    factor * a_class[c]. Written as p / scale < factor like the released code, so a zero or NaN scale
    never drops. error_scale='none' (an option, not the released rule) uses a scale of 1 for every
    class: a fixed threshold `factor`, which still works when stage 1 fits the train labels exactly.
    error_scale='val' (an option) measures the class error on held_out = (probs dict, labels) of
    videos stage 1 never trained on: the same statistic, but one that memorising the train
    labels cannot drive to 0 / 0.
    Returns (drop_audio, drop_visual) (N, C) bool, a_class (C,), v_class (C,).
    """
    y = labels > 0
    if error_scale == "none":
        a_class = v_class = np.ones(labels.shape[1])
    else:  # the error of the original inputs' probs: on the train labels, or on the held-out ones
        probs, scored = held_out if error_scale == "val" else (orig, labels)
        a_class = class_error_scale(probs["audio_prob"], scored)
        v_class = class_error_scale(probs["visual_prob"], scored)
    with np.errstate(invalid="ignore", divide="ignore"):
        drop_v = y & (aud_swapped["visual_prob"] / v_class < factor) & (aud_swapped["audio_prob"] / v_class < factor)
        drop_a = y & (vis_swapped["audio_prob"] / a_class < factor) & (vis_swapped["visual_prob"] / a_class < factor)
    return drop_a, drop_v, a_class, v_class
