"""Time avvp.evaluate.llp_scores on LLP-like random videos against a per-video loop reference.

    python benchmarks/eval_speed.py [--videos 1200] [--repeats 7] [--seed 0]

The loop reference scores one video, one class at a time (the structure of the released
evaluation code, without its per-video pandas filtering); both must give the same 10 scores.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp.evaluate import KEYS, llp_scores  # noqa: E402


# ----------------------------------------------------------------------------- data

def llp_like(n, seed):
    """Truth and noisy predictions shaped like LLP test videos: 1-3 events, audio 5.5 / visual 7.2 segments."""
    rng = np.random.default_rng(seed)
    gt_a = np.zeros((n, 25, 10), np.uint8)
    gt_v = np.zeros_like(gt_a)
    for i in range(n):
        for c in rng.choice(25, size=rng.choice([1, 2, 3], p=[0.4, 0.55, 0.05]), replace=False):
            for m, mean_len in ((gt_a, 5.5), (gt_v, 7.2)):
                if rng.random() < 0.8:
                    length = int(np.clip(rng.normal(mean_len, 3), 1, 10))
                    on = rng.integers(0, 11 - length)
                    m[i, c, on:on + length] = 1

    def noisy(m):
        # flip 8% of the cells of the true classes and of ~1 random extra class per video
        touched = m.any(axis=2, keepdims=True) | (rng.random((n, 25, 1)) < 0.04)
        flips = (rng.random(m.shape) < 0.08) & touched
        return (m ^ flips).astype(np.uint8)
    return noisy(gt_a), noisy(gt_v), gt_a, gt_v


# ----------------------------------------------------------------------------- loop reference

def _runs(seq):
    out, t = [], 0
    while t < 10:
        if seq[t]:
            s = t
            while t < 10 and seq[t]:
                t += 1
            out.append((s, t))
        else:
            t += 1
    return out


def _iou_ok(x, y):
    inter = max(0, min(x[1], y[1]) - max(x[0], y[0]))
    return inter >= 0.5 * ((x[1] - x[0]) + (y[1] - y[0]) - inter)


def _evt_counts(p, g):
    P, G = _runs(p), _runs(g)
    tp = sum(any(_iou_ok(x, y) for y in G) for x in P)
    return tp, len(P) - tp, sum(not any(_iou_ok(x, y) for x in P) for y in G)


def _seg_counts(p, g):
    return int(np.sum(p * g)), int(np.sum(p * (1 - g))), int(np.sum((1 - p) * g))


def _f(counts):
    fs = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts if tp + fp or tp + fn]
    return sum(fs) / len(fs) if fs else 1.0


def loop_scores(pa, pv, ga, gv):
    acc = {k: [] for k in KEYS}
    for i in range(len(pa)):
        sa, sv, ta, tv = pa[i], pv[i], ga[i], gv[i]
        sav, tav = sa * sv, ta * tv
        for lv, count in (("seg", _seg_counts), ("evt", _evt_counts)):
            ca = [count(sa[c], ta[c]) for c in range(25)]
            cv = [count(sv[c], tv[c]) for c in range(25)]
            cav = [count(sav[c], tav[c]) for c in range(25)]
            acc[f"{lv}_a"].append(_f(ca))
            acc[f"{lv}_v"].append(_f(cv))
            acc[f"{lv}_av"].append(_f(cav))
            acc[f"{lv}_event"].append(_f([tuple(x + y for x, y in zip(a, v)) for a, v in zip(ca, cv)]))
    out = {k: 100.0 * float(np.mean(v)) for k, v in acc.items() if v}
    for lv in ("seg", "evt"):
        out[f"{lv}_type"] = (out[f"{lv}_a"] + out[f"{lv}_v"] + out[f"{lv}_av"]) / 3
    return {k: out[k] for k in KEYS}


# ----------------------------------------------------------------------------- timing

def timed(fn, args, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times)), result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=1200, help="number of videos (LLP test split: 1,200)")
    ap.add_argument("--repeats", type=int, default=7, help="runs of the vectorized scorer (median reported)")
    ap.add_argument("--loop_repeats", type=int, default=3, help="runs of the loop reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.videos < 1 or args.repeats < 1 or args.loop_repeats < 1:
        ap.error("--videos, --repeats and --loop_repeats must be >= 1")

    data = llp_like(args.videos, args.seed)
    print(f"{args.videos} LLP-like videos; python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPU(s)")
    llp_scores(*(x[:1] for x in data))          # builds the 1,024-code tables once (a few ms)
    med, best, fast = timed(llp_scores, data, args.repeats)
    print(f"llp_scores (vectorized): median {med * 1e3:8.2f} ms   best {best * 1e3:8.2f} ms   ({args.repeats} runs)")
    lmed, lbest, slow = timed(loop_scores, data, args.loop_repeats)
    print(f"loop reference         : median {lmed * 1e3:8.2f} ms   best {lbest * 1e3:8.2f} ms   ({args.loop_repeats} runs)")
    print(f"speed-up: {lmed / med:.0f}x")
    worst = max(abs(fast[k] - slow[k]) for k in KEYS)
    print(f"max |difference| over the 10 scores: {worst:.2e}")
    print("scores: " + "  ".join(f"{k} {fast[k]:.2f}" for k in KEYS))
    if worst > 1e-6:
        print("error: the vectorized and loop scores differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
