"""The LLP evaluation protocol (segment- and event-level F-scores), vectorized over videos.

What it computes (the released HAN / MA protocol) is written plainly, one video at a time, in
avvp/evaluate_reference.py, and in words in docs/METHOD.md ("The evaluation"); the tests hold the
two modules equal.

Implementation: every (video, class) 10-segment 0/1 sequence is encoded as a 10-bit integer.
Segment-level counts are popcounts of bitwise combinations of the codes; event-level counts are
computed once per distinct (prediction code, truth code) pair from a table of the runs of each
of the 1,024 codes, then scattered back. No Python loop runs over videos or classes.

Command line:
    python -m avvp.evaluate --label AVVP_test_pd.csv --eval_audio AVVP_eval_audio.csv \
        --eval_visual AVVP_eval_visual.csv --pred_audio pred_audio.csv --pred_visual pred_visual.csv [--json]
"""
import functools
import json
import sys
import warnings

import numpy as np
import pandas as pd

from . import llp
from .llp import CLASSES, NUM_CLASSES, NUM_SEGMENTS
from .config import ArgumentParser
from .errors import AVVPError, cli

KEYS = ("seg_a", "seg_v", "seg_av", "seg_type", "seg_event",
        "evt_a", "evt_v", "evt_av", "evt_type", "evt_event")
_NCODES = 1 << NUM_SEGMENTS          # 1024 possible 10-segment sequences
_MAX_RUNS = (NUM_SEGMENTS + 1) // 2  # 5: at most 5 runs in 10 segments (1010101010)


# ----------------------------------------------------------------------------- helpers

def _to_numpy(x, name):
    """numpy array or torch tensor (any device, with or without grad) -> numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise AVVPError(f"{name}: cannot convert to an array ({e})") from None


def _binary(x, name, n=None):
    """Validate a (N, 25, 10) 0/1 array; returns it as bool."""
    x = _to_numpy(x, name)
    if x.ndim != 3 or x.shape[1:] != (NUM_CLASSES, NUM_SEGMENTS):
        raise AVVPError(f"{name}: shape {tuple(x.shape)} (expected (N, {NUM_CLASSES}, {NUM_SEGMENTS}))")
    if n is not None and x.shape[0] != n:
        raise AVVPError(f"{name}: {x.shape[0]} videos, but the first array has {n}")
    if x.dtype != np.bool_:
        if not (np.issubdtype(x.dtype, np.number)):
            raise AVVPError(f"{name}: dtype {x.dtype} (expected 0/1 numbers or bool)")
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise AVVPError(f"{name}: {int(bad.sum())} value(s) other than 0 and 1 (threshold probabilities "
                            f"with predict_segments first)")
        x = x != 0
    return x


def _codes(x):
    """(N, 25, 10) bool -> (N, 25) int64 codes, bit t = segment t."""
    # a float32 matmul is exact here (integers < 2**24) and much faster than packbits
    weights = (1 << np.arange(NUM_SEGMENTS)).astype(np.float32)
    return (x.reshape(-1, NUM_SEGMENTS).astype(np.float32) @ weights).astype(np.int64).reshape(x.shape[:-1])


@functools.lru_cache(maxsize=1)
def _tables():
    """Per code: popcount (1024,), run onsets / offsets (1024, 5), run validity (1024, 5), run count (1024,)."""
    codes = np.arange(_NCODES)
    bits = ((codes[:, None] >> np.arange(NUM_SEGMENTS)) & 1).astype(np.int8)   # (1024, 10)
    popcount = bits.sum(1).astype(np.int16)
    padded = np.zeros((_NCODES, NUM_SEGMENTS + 2), dtype=np.int8)
    padded[:, 1:-1] = bits
    d = np.diff(padded, axis=1)                                                 # (1024, 11)
    code_on, t_on = np.nonzero(d == 1)      # row-major: the k-th onset of a code pairs with its k-th offset
    _, t_off = np.nonzero(d == -1)
    nruns = np.bincount(code_on, minlength=_NCODES)
    slot = np.arange(len(code_on)) - np.concatenate([[0], np.cumsum(nruns)[:-1]])[code_on]
    on = np.zeros((_NCODES, _MAX_RUNS), dtype=np.int8)      # small ints: the (U, 5, 5) work stays cheap
    off = np.zeros((_NCODES, _MAX_RUNS), dtype=np.int8)
    valid = np.zeros((_NCODES, _MAX_RUNS), dtype=bool)
    on[code_on, slot] = t_on
    off[code_on, slot] = t_off
    valid[code_on, slot] = True
    for arr in (popcount, on, off, valid, nruns):
        arr.setflags(write=False)
    return popcount, on, off, valid, nruns.astype(np.int16)


def _segment_counts(pred, gt):
    """Codes (..., 25) -> TP, FP, FN (..., 25): segment-level cell counts."""
    popcount = _tables()[0]
    full = _NCODES - 1
    return popcount[pred & gt], popcount[pred & ~gt & full], popcount[~pred & gt & full]


def _event_counts(pred, gt):
    """Codes (..., 25) -> TP, FP, FN (..., 25): event-level run counts (IoU >= 0.5)."""
    _, on, off, valid, nruns = _tables()
    key = (pred * _NCODES + gt).ravel()
    # distinct (pred, truth) pairs and the inverse map through a 2**20 lookup table: O(n), no sort
    seen = np.zeros(_NCODES * _NCODES, dtype=bool)
    seen[key] = True
    uniq = np.flatnonzero(seen)
    slot = np.empty(_NCODES * _NCODES, dtype=np.int64)
    slot[uniq] = np.arange(len(uniq))
    inv = slot[key]
    p, g = uniq // _NCODES, uniq % _NCODES
    ps, pe, pv = on[p][:, :, None], off[p][:, :, None], valid[p][:, :, None]   # (U, 5, 1): predicted runs
    gs, ge, gv = on[g][:, None, :], off[g][:, None, :], valid[g][:, None, :]   # (U, 1, 5): true runs
    inter = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs), 0, None)
    union = (pe - ps) + (ge - gs) - inter
    match = pv & gv & (2 * inter >= union)                                     # IoU >= 0.5, exact on integers
    tp = match.any(axis=2).sum(axis=1, dtype=np.int16)
    fp = nruns[p] - tp
    # (for contiguous runs at IoU >= 0.5 the matching is in fact one-to-one, so this equals
    # nruns[g] - tp; counted literally, as the released code does)
    fn = nruns[g] - match.any(axis=1).sum(axis=1, dtype=np.int16)
    shape = pred.shape
    return tp[inv].reshape(shape), fp[inv].reshape(shape), fn[inv].reshape(shape)


def _video_f(tp, fp, fn):
    """Counts (K, N, 25) -> per-video F (K, N): mean of the classes' F over active classes, 1 if none.

    Only the active (video, class) entries are touched: (TP+FP) != 0 or (TP+FN) != 0.
    """
    k, n, c = tp.shape
    total = (tp + fp + fn).ravel()
    idx = np.flatnonzero(total)
    tp_i = tp.ravel()[idx].astype(np.float64)
    f = 2.0 * tp_i / (tp_i + total[idx])      # 2TP / (2TP + FP + FN)
    row = idx // c
    f_sum = np.bincount(row, weights=f, minlength=k * n)
    n_active = np.bincount(row, minlength=k * n)
    return np.where(n_active > 0, f_sum / np.maximum(n_active, 1), 1.0).reshape(k, n)


# ----------------------------------------------------------------------------- public API

def predict_segments(frame_prob, a_prob, v_prob, threshold=0.5):
    """Segment predictions of the LLP protocol.

    frame_prob (N, 10, 2, 25): segment probabilities (modality 0 audio, 1 visual);
    a_prob, v_prob (N, 25): video-level audio / visual probabilities. numpy or torch.
    Returns pred_a, pred_v (N, 25, 10) uint8: audio (c, t) on iff
    frame_prob[:, t, 0, c] >= threshold and a_prob[:, c] >= threshold; visual likewise.
    """
    fp = _to_numpy(frame_prob, "frame_prob")
    ap = _to_numpy(a_prob, "a_prob")
    vp = _to_numpy(v_prob, "v_prob")
    if fp.ndim != 4 or fp.shape[1:] != (NUM_SEGMENTS, 2, NUM_CLASSES):
        raise AVVPError(f"frame_prob: shape {tuple(fp.shape)} (expected (N, {NUM_SEGMENTS}, 2, {NUM_CLASSES}))")
    n = fp.shape[0]
    for name, x in (("a_prob", ap), ("v_prob", vp)):
        if x.shape != (n, NUM_CLASSES):
            raise AVVPError(f"{name}: shape {tuple(x.shape)} (expected ({n}, {NUM_CLASSES}))")
    seg_on = fp >= threshold                                       # (N, 10, 2, 25)
    pred_a = seg_on[:, :, 0, :] & (ap >= threshold)[:, None, :]    # (N, 10, 25)
    pred_v = seg_on[:, :, 1, :] & (vp >= threshold)[:, None, :]
    return (np.ascontiguousarray(pred_a.transpose(0, 2, 1)).astype(np.uint8),
            np.ascontiguousarray(pred_v.transpose(0, 2, 1)).astype(np.uint8))


def llp_scores(pred_a, pred_v, gt_a, gt_v):
    """The 10 LLP scores (percent) of (N, 25, 10) 0/1 predictions against the truth.

    Keys: seg_a seg_v seg_av seg_type seg_event evt_a evt_v evt_av evt_type evt_event.
    """
    pa = _binary(pred_a, "pred_a")
    n = pa.shape[0]
    if n == 0:
        raise AVVPError("no videos to score")
    pv, ga, gv = (_binary(x, name, n) for x, name in ((pred_v, "pred_v"), (gt_a, "gt_a"), (gt_v, "gt_v")))
    pa, pv, ga, gv = (_codes(x) for x in (pa, pv, ga, gv))
    pred = np.stack([pa, pv, pa & pv])         # kinds a, v, av; audio-visual = audio AND visual
    true = np.stack([ga, gv, ga & gv])
    # (TP, FP, FN) of shape (8, N, 25): seg a, v, av, event (a + v pooled), then the same at event level
    counts = [np.concatenate([seg, seg[:2].sum(axis=0, keepdims=True), evt, evt[:2].sum(axis=0, keepdims=True)])
              for seg, evt in zip(_segment_counts(pred, true), _event_counts(pred, true))]
    score = 100.0 * _video_f(*counts).mean(axis=-1)
    out = {}
    for i, prefix in ((0, "seg"), (4, "evt")):
        a, v, av, event = (float(x) for x in score[i:i + 4])
        out.update({f"{prefix}_a": a, f"{prefix}_v": v, f"{prefix}_av": av,
                    f"{prefix}_type": (a + v + av) / 3.0, f"{prefix}_event": event})
    return {k: out[k] for k in KEYS}


def per_class_segment_f(pred_a, pred_v, gt_a, gt_v):
    """Per-class segment-level F (percent) from counts pooled over all videos.

    DataFrame indexed by class name, columns f_a, f_v, f_av; NaN where a class has no true and
    no predicted positive of that kind.
    """
    pa = _binary(pred_a, "pred_a")
    n = pa.shape[0]
    pv, ga, gv = (_binary(x, name, n) for x, name in ((pred_v, "pred_v"), (gt_a, "gt_a"), (gt_v, "gt_v")))
    cols = {}
    for key, p, g in (("f_a", pa, ga), ("f_v", pv, gv), ("f_av", pa & pv, ga & gv)):
        tp = (p & g).sum(axis=(0, 2)).astype(np.float64)
        fp = (p & ~g).sum(axis=(0, 2))
        fn = (~p & g).sum(axis=(0, 2))
        denom = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[key] = np.where(denom > 0, 100.0 * 2 * tp / denom, np.nan)
    return pd.DataFrame(cols, index=pd.Index(CLASSES, name="class"))


def format_table(metrics, title=None):
    """The LLP table: rows Segment-level / Event-level, columns Audio .. Event@AV, 2 decimals."""
    missing = [k for k in KEYS if k not in metrics]
    if missing:
        raise AVVPError(f"metrics lack key(s) {missing}")
    heads = ["Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV"]
    kinds = ["a", "v", "av", "type", "event"]
    label_w = len("Segment-level")
    widths = [max(len(h), 7) for h in heads]
    lines = []
    if title:
        lines.append(str(title))
    lines.append(" " * label_w + "".join("  " + h.rjust(w) for h, w in zip(heads, widths)))
    for label, prefix in (("Segment-level", "seg"), ("Event-level", "evt")):
        cells = "".join("  " + f"{float(metrics[f'{prefix}_{k}']):.2f}".rjust(w) for k, w in zip(kinds, widths))
        lines.append(label.ljust(label_w) + cells)
    return "\n".join(lines)


def evaluate_files(label_csv, eval_audio, eval_visual, pred_audio, pred_visual):
    """Score prediction files (LLP dense format) on the videos of a split; returns llp_scores' dict.

    The split's filenames come from a weak label file; truth and predictions are read as dense
    files. Videos of the split with no row have no events; rows of other videos are ignored.
    """
    split = llp.read_weak(label_csv)
    names = split.filenames
    mats = []
    for path, is_pred in ((eval_audio, False), (eval_visual, False), (pred_audio, True), (pred_visual, True)):
        events = llp.read_dense(path, allow_empty=is_pred)  # a model may predict no event at all
        if is_pred and len(events) and set(names).isdisjoint(events["filename"].tolist()):
            warnings.warn(f"{path}: none of its {len(events)} row(s) names a video of {label_csv} "
                          f"(wrong split?); every prediction is empty", UserWarning, stacklevel=2)
        mats.append(llp.dense_matrix(events, names))
    gt_a, gt_v, pred_a, pred_v = mats
    return llp_scores(pred_a, pred_v, gt_a, gt_v)


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = ArgumentParser(prog="python -m avvp.evaluate",
                       description="Score LLP segment predictions (dense files) with the LLP protocol.")
    p.add_argument("--label", required=True, help="weak label file of the split, e.g. AVVP_test_pd.csv")
    p.add_argument("--eval_audio", required=True, help="dense audio truth, e.g. AVVP_eval_audio.csv")
    p.add_argument("--eval_visual", required=True, help="dense visual truth, e.g. AVVP_eval_visual.csv")
    p.add_argument("--pred_audio", required=True, help="dense audio predictions (same format)")
    p.add_argument("--pred_visual", required=True, help="dense visual predictions (same format)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the 10 scores (percent)")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    # warnings (e.g. malformed rows skipped) as one stderr line each
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            metrics = evaluate_files(args.label, args.eval_audio, args.eval_visual, args.pred_audio,
                                     args.pred_visual)
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_table(metrics, title=f"LLP scores on {args.label}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
