"""A model over a split: batched probabilities, LLP metrics, and the metrics' JSON file."""
import json

import torch

from . import evaluate as llp_eval
from .errors import AVVPError
from .files import atomic_write_text

PREDICT_KEYS = ("video_prob", "audio_prob", "visual_prob", "frame_prob")


@torch.no_grad()
def predict(model, split, batch_size=256, swap=None, keys=PREDICT_KEYS, rows=None):
    """Run the model in eval mode over a split in large batches.

    swap: None, or (partner (N,) long, 'audio' | 'visual'): replace that modality of video i by
    partner[i]'s. keys: the outputs wanted, of video_prob, audio_prob, visual_prob (N, C) and
    frame_prob (N, 10, 2, C). rows: None (every video), or the indices (R,) of the videos to run,
    the outputs then (R, ...) in that order. Returns a numpy dict of them; outputs stay on the
    model's device until the end (one copy to the host per output, not one per batch).
    """
    was_training = model.training
    model.eval()
    outs = {k: [] for k in keys}
    dev = split.feats["audio"].device
    partner = None if swap is None else torch.as_tensor(swap[0], device=dev)
    order = torch.arange(len(split), device=dev) if rows is None else torch.as_tensor(rows, device=dev)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        a_idx = v_idx = idx
        if swap is not None:
            a_idx, v_idx = (partner[idx], idx) if swap[1] == "audio" else (idx, partner[idx])
        out = model(*split.inputs(a_idx, v_idx))
        for k in keys:
            outs[k].append(getattr(out, k).float())
    model.train(was_training)
    return {k: torch.cat(v).cpu().numpy() for k, v in outs.items()}


def evaluate(model, split, batch_size=256, probs=None):
    """LLP metrics (percent, keys of avvp.evaluate) of the model on a split with dense truth."""
    if split.gt_a is None:
        raise AVVPError(f"{split.path}: no dense truth loaded for evaluation")
    p = probs if probs is not None else predict(model, split, batch_size)
    pred_a, pred_v = llp_eval.predict_segments(p["frame_prob"], p["audio_prob"], p["visual_prob"])
    return llp_eval.llp_scores(pred_a, pred_v, split.gt_a, split.gt_v)


def metrics_line(m):
    return ("seg A {seg_a:.2f} V {seg_v:.2f} AV {seg_av:.2f} Type {seg_type:.2f} Event {seg_event:.2f} | "
            "evt A {evt_a:.2f} V {evt_v:.2f} AV {evt_av:.2f} Type {evt_type:.2f} Event {evt_event:.2f}").format(**m)


def write_metrics(path, metrics, extra=None):
    atomic_write_text(path, json.dumps({**metrics, **(extra or {})}, indent=2, sort_keys=True) + "\n")
