"""The LLP evaluation protocol written plainly: one video, one class, one run at a time, as the
released HAN / MA evaluation code computes it. Read this to learn the metric; avvp/evaluate.py
computes the same numbers vectorized (the tests hold the two equal on random videos).

Inputs are 0/1 arrays (N videos, 25 classes, 10 segments): the predicted and the true audio and
visual events. A prediction is on where the segment probability and the video-level probability
of its modality are both >= 0.5 (evaluate.predict_segments).
"""
import numpy as np

KINDS = ("a", "v", "av", "event")


def runs(seq):
    """The contiguous runs of 1s of a 0/1 sequence, each as the set of its segment indices."""
    out, t = [], 0
    while t < len(seq):
        if seq[t]:
            start = t
            while t < len(seq) and seq[t]:
                t += 1
            out.append(set(range(start, t)))
        else:
            t += 1
    return out


def segment_counts(pred, true):
    """Segment level: every one of the 10 segments is a cell; (TP, FP, FN) over the cells."""
    tp = sum(1 for p, g in zip(pred, true) if p and g)
    fp = sum(1 for p, g in zip(pred, true) if p and not g)
    fn = sum(1 for p, g in zip(pred, true) if not p and g)
    return tp, fp, fn


def event_counts(pred, true):
    """Event level: a predicted run is a TP when some true run overlaps it with IoU >= 0.5, else a
    FP; a true run that no predicted run overlaps so is a FN. Not a one-to-one matching: two
    predicted runs may both hit one true run."""
    p_runs, t_runs = runs(pred), runs(true)

    def hit(x, y):
        return len(x & y) >= 0.5 * len(x | y)

    tp = sum(1 for x in p_runs if any(hit(x, y) for y in t_runs))
    fn = sum(1 for y in t_runs if not any(hit(x, y) for x in p_runs))
    return tp, len(p_runs) - tp, fn


def f_over_classes(counts):
    """A video's F: per class 2TP / (2TP + FP + FN), averaged over the classes that have a true or a
    predicted positive; a video with none scores 1."""
    fs = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts if tp + fp > 0 or tp + fn > 0]
    return sum(fs) / len(fs) if fs else 1.0


def video_scores(pa, pv, ga, gv):
    """One video's scores (fractions): {level_kind} for level seg / evt and kind a, v, av, event.
    pa, pv, ga, gv: (25, 10) 0/1. Audio-visual = audio AND visual, for the prediction and the truth
    alike; "event" pools the audio and the visual counts of each class before the F."""
    pav = [[int(a and v) for a, v in zip(ra, rv)] for ra, rv in zip(pa, pv)]
    gav = [[int(a and v) for a, v in zip(ra, rv)] for ra, rv in zip(ga, gv)]
    out = {}
    for level, count in (("seg", segment_counts), ("evt", event_counts)):
        ca = [count(pa[c], ga[c]) for c in range(len(pa))]
        cv = [count(pv[c], gv[c]) for c in range(len(pv))]
        cav = [count(pav[c], gav[c]) for c in range(len(pav))]
        pooled = [tuple(x + y for x, y in zip(a, v)) for a, v in zip(ca, cv)]
        out[f"{level}_a"], out[f"{level}_v"] = f_over_classes(ca), f_over_classes(cv)
        out[f"{level}_av"], out[f"{level}_event"] = f_over_classes(cav), f_over_classes(pooled)
    return out


def llp_scores(pred_a, pred_v, gt_a, gt_v):
    """The dataset's scores in percent, the keys of avvp.evaluate: each kind the mean over videos of
    the video scores; "type" the mean of the a, v and av scores."""
    per_video = [video_scores(*(np.asarray(x[i]).tolist() for x in (pred_a, pred_v, gt_a, gt_v)))
                 for i in range(len(pred_a))]
    out = {}
    for level in ("seg", "evt"):
        for kind in KINDS:
            out[f"{level}_{kind}"] = 100.0 * sum(v[f"{level}_{kind}"] for v in per_video) / len(per_video)
        out[f"{level}_type"] = (out[f"{level}_a"] + out[f"{level}_v"] + out[f"{level}_av"]) / 3
    return out
