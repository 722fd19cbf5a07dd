"""Stage 2's calibrated drop rule (--calibrate val): drop a weak label when the swap evidence says
its modality is more likely absent than present, with that probability learnt on the val split.

The released rule compares swapped probabilities with a threshold scaled by stage 1's class error;
neither the factor 0.5 nor the error scale says how often a label below it is really absent. LLP
ships dense audio and visual truth for its val videos (AVVP_eval_audio.csv / AVVP_eval_visual.csv
cover val and test), so the same swaps run on val give, for every val weak label, its evidence and
whether the modality truly lacks the event. A logistic regression fit there turns a train label's
evidence into P(absent); the label goes when P(absent) > 0.5, the rule that gets the most labels
right. Nothing in it is fitted to the train truth; it is meant with --folds, where every train video
is read by a model that never saw it, as every val video is.
"""
import numpy as np

# the six video-level probabilities behind a label: (original, visual swapped, audio swapped) x (audio, visual)
EVIDENCE = [f"{kind}_{which}" for kind in ("orig", "vis_swapped", "aud_swapped") for which in ("audio", "visual")]
FEATURES = EVIDENCE + [f"class_mean_{e}" for e in EVIDENCE]
L2 = 1.0       # ridge on the standardised weights: keeps a small val split (150 videos in the demo) from overfitting
DECISION = 0.5  # drop when absent is the more likely state: the fewest wrong labels


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def evidence(orig, vis_swapped, aud_swapped):
    """The three swap_probs dicts (N, C) -> (N, C, 6) logits in the order of EVIDENCE."""
    return np.stack([logit(d[f"{which}_prob"]) for d in (orig, vis_swapped, aud_swapped)
                     for which in ("audio", "visual")], axis=-1)


def class_means(ev, labels):
    """(C, 6): the mean evidence over each class's weak labels (0 for a class with none). Measured on
    the train split and given to val labels too: how audible or visible a class looks as a whole."""
    y = labels > 0
    return (ev * y[..., None]).sum(axis=0) / np.maximum(y.sum(axis=0), 1)[:, None]


def design(ev, labels, means):
    """One row per weak label: (L, 12) features, and the (L,) video and class indices."""
    vi, ci = np.nonzero(labels > 0)
    return np.concatenate([ev[vi, ci], means[ci]], axis=1), vi, ci


def standardised(x, mean, std):
    """(L, F) features -> (L, 1 + F): a column of ones for the intercept, then (x - mean) / std."""
    return np.hstack([np.ones((len(x), 1)), (x - mean) / std])


def fit_logistic(x, y, l2=L2, iters=100):
    """L2-regularised logistic regression (intercept not penalised) by Newton's method on standardised
    features. x (L, F), y (L,) 0/1. Returns {"mean", "std", "weights"} (weights: intercept first)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    z = standardised(x, mean, std)
    reg = l2 * np.eye(z.shape[1])
    reg[0, 0] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (p - y) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"mean": mean, "std": std, "weights": w}


def prob_absent(model, x):
    """The fitted P(absent) of each row of x (L, F): (L,)."""
    return 1.0 / (1.0 + np.exp(-standardised(x, model["mean"], model["std"]) @ model["weights"]))


def calibrated_drops(weak, train_probs, val_labels, val_present, val_runs):
    """The drops of --calibrate val.

    weak (N, C) train weak labels; train_probs: swap_probs' (orig, vis_swapped, aud_swapped) on the
    train split; val_labels (M, C) weak labels of val; val_present: (audio, visual) (M, C) bool,
    whether the event is truly audible / visible in each val video; val_runs: swap_probs' triple on
    val for every model that read train (each fold model's run adds its own rows).
    Returns drop_audio, drop_visual (N, C) bool, p_absent {"audio", "visual"} (N, C) (NaN off the
    weak labels) and a summary per modality for estimate_meta.json.
    """
    ev = evidence(*train_probs)
    means = class_means(ev, weak)
    x_train, vi, ci = design(ev, weak, means)
    val_rows = [design(evidence(*run), val_labels, means) for run in val_runs]
    x_val = np.concatenate([r[0] for r in val_rows])
    drops, p_absent, summary = {}, {}, {}
    for m, kind in enumerate(("audio", "visual")):
        absent = np.concatenate([~val_present[m][r[1], r[2]] for r in val_rows]).astype(np.float64)
        p = np.full(weak.shape, np.nan)
        info = {"val_labels": int(len(absent)), "val_absent": int(absent.sum())}
        if 0 < absent.sum() < len(absent):
            model = fit_logistic(x_val, absent)
            p[vi, ci] = prob_absent(model, x_train)
            fit = prob_absent(model, x_val) > DECISION
            info.update({"features": FEATURES, "weights": model["weights"].tolist(),
                         "val_dropped": int(fit.sum()), "val_dropped_right": int((fit & (absent > 0)).sum())})
        else:  # val shows no (or only) absent labels of this modality: nothing to learn a rule from
            info["note"] = f"no {kind} rule learnt: the val labels are all {'present' if not absent.sum() else 'absent'}"
        drops[kind] = (weak > 0) & (np.nan_to_num(p, nan=0.0) > DECISION)
        p_absent[kind] = p
        summary[kind] = info
    return drops["audio"], drops["visual"], p_absent, summary
