"""Stage 2's label estimators: from the swap evidence to the labels to drop. `--estimator NAME`.

An estimator is one function registered under one name:

    @estimator("name", options=("threshold_factor",), reads_val=False)
    def name(train, val, threshold_factor):
        ...
        return Estimate(drop_audio, drop_visual, per_drop={...}, meta={...})

train: the Evidence of the train split (model.py): weak labels (N, C) and the video-level audio /
visual probabilities (N, C) of the original, visual-swapped and audio-swapped inputs. val: None, or
with reads_val=True one Evidence of the val split per model read, each carrying the val split's
dense truth as `present` (what --eval_audio / --eval_visual say is truly audible / visible).
options: the stage-2 flags the function takes, by name.
It returns the drops, (N, C) bool each, and what it wants reported: `per_drop` columns of
dropped_labels.csv ({column: {"audio": (N, C), "visual": (N, C)}}, read at each dropped label) and
`meta` entries of estimate_meta.json. docs/METHOD.md shows a ten-line example.
"""
from collections import namedtuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from avvp import report

Estimate = namedtuple("Estimate", "drop_audio drop_visual per_drop meta")

ESTIMATORS = {}


def estimator(name, options=(), reads_val=False):
    """Register an estimator function under `name` (what --estimator NAME picks)."""
    def register(fn):
        fn.options, fn.reads_val = tuple(options), reads_val
        ESTIMATORS[name] = fn
        return fn
    return register


# ----------------------------------------------------------------------------- MA's rule (released)

def class_error_scale(prob, labels):
    """Per-class error rate of (prob > 0.5) against the weak labels over all videos, / its maximum.

    (N, C), (N, C) -> (C,); NaN everywhere when the model makes no error at all (then nothing is
    dropped, as in the released code, where the division gives NaN).
    """
    err = ((prob > 0.5) != (labels > 0)).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return err / err.max()


@estimator("released", options=("threshold_factor",))
def released(train, val, threshold_factor):
    """MA's rule (docs/METHOD.md, stage 2). Drop the VISUAL label c of video i if, with its audio
    swapped, both its audio and visual probability of c fall below factor * v_class[c]; the AUDIO
    label alike with the visual track swapped and a_class. a_class / v_class: the model's per-class
    error on the train labels (audio / visual probs), over its maximum. Written as p / scale < factor
    like the released code, so a zero or NaN scale never drops."""
    y = train.labels > 0
    a_class = class_error_scale(train.orig["audio_prob"], train.labels)      # (C,)
    v_class = class_error_scale(train.orig["visual_prob"], train.labels)     # (C,)
    vis, aud = train.vis_swapped, train.aud_swapped
    with np.errstate(invalid="ignore", divide="ignore"):
        drop_a = y & (vis["audio_prob"] / a_class < threshold_factor) & (vis["visual_prob"] / a_class < threshold_factor)
        drop_v = y & (aud["visual_prob"] / v_class < threshold_factor) & (aud["audio_prob"] / v_class < threshold_factor)
    for kind, scale in (("audio", a_class), ("visual", v_class)):
        if report.normalisation_is_undefined(scale):
            print(f"note: {report.undefined_normalisation_note(kind)}")
    n = len(y)
    threshold = {"audio": np.broadcast_to(threshold_factor * a_class, (n, len(a_class))),
                 "visual": np.broadcast_to(threshold_factor * v_class, (n, len(v_class)))}
    return Estimate(drop_a, drop_v, {"threshold": threshold}, {"a_class": a_class.tolist(), "v_class": v_class.tolist()})


# ----------------------------------------------------------------------------- calibrated on val

# the six video-level probabilities behind a label: (original, visual swapped, audio swapped) x (audio, visual)
EVIDENCE = [f"{kind}_{which}" for kind in ("orig", "vis_swapped", "aud_swapped") for which in ("audio", "visual")]
FEATURES = EVIDENCE + [f"class_mean_{e}" for e in EVIDENCE]
L2 = 1.0        # ridge on the standardised weights: keeps a small val split (150 videos in the demo) from overfitting
DECISION = 0.5  # drop when absent is the more likely state: the fewest wrong labels


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def evidence_logits(ev):
    """An Evidence's three probability dicts (N, C) -> (N, C, 6) logits in the order of EVIDENCE."""
    return np.stack([logit(d[f"{which}_prob"]) for d in (ev.orig, ev.vis_swapped, ev.aud_swapped)
                     for which in ("audio", "visual")], axis=-1)


def class_means(x, labels):
    """(C, 6): the mean evidence over each class's weak labels (0 for a class with none). Measured on
    the train split and given to val labels too: how audible or visible a class looks as a whole."""
    y = labels > 0
    return (x * y[..., None]).sum(axis=0) / np.maximum(y.sum(axis=0), 1)[:, None]


def design(x, labels, means):
    """One row per weak label: (L, 12) features, and the (L,) video and class indices."""
    vi, ci = np.nonzero(labels > 0)
    return np.concatenate([x[vi, ci], means[ci]], axis=1), vi, ci


def fit_absent(x, absent, l2=L2):
    """P(absent | features): standardised features, then an L2-regularised logistic regression
    (penalty l2 / 2 * |w|^2 on the weights, intercept free). x (L, F), absent (L,) 0/1."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / l2, solver="newton-cholesky", tol=1e-10,
                                                              max_iter=100)).fit(x, absent)


@estimator("calibrated", reads_val=True)
def calibrated(train, val):
    """Drop a weak label where P(its modality is absent | its evidence) > 0.5. The evidence: the six
    swap logits of the label and their means over its class; P(absent) a logistic regression fit on
    the same swaps of the val split against its dense truth (LLP ships val's). Meant with --folds,
    where every train video is read, as every val video is, by a model that never trained on it."""
    x = evidence_logits(train)
    means = class_means(x, train.labels)
    x_train, vi, ci = design(x, train.labels, means)
    val_rows = [design(evidence_logits(run), run.labels, means) for run in val]
    x_val = np.concatenate([r[0] for r in val_rows])
    drops, p_absent, summary = {}, {}, {}
    for m, kind in enumerate(("audio", "visual")):
        absent = np.concatenate([~run.present[m][r[1], r[2]] for run, r in zip(val, val_rows)]).astype(np.int64)
        p = np.full(train.labels.shape, np.nan)
        info = {"val_labels": int(len(absent)), "val_absent": int(absent.sum())}
        if 0 < absent.sum() < len(absent):
            rule = fit_absent(x_val, absent)
            p[vi, ci] = rule.predict_proba(x_train)[:, 1]
            fit = rule.predict_proba(x_val)[:, 1] > DECISION
            lr = rule[-1]
            info.update({"features": FEATURES, "weights": [float(lr.intercept_[0]), *lr.coef_[0].tolist()],
                         "val_dropped": int(fit.sum()), "val_dropped_right": int((fit & (absent > 0)).sum())})
            print(f"calibrated: {kind} rule from {info['val_labels']} val labels ({info['val_absent']} truly absent); "
                  f"on val it drops {info['val_dropped']}, {info['val_dropped_right']} rightly")
        else:  # val shows no (or only) absent labels of this modality: nothing to learn a rule from
            info["note"] = f"no {kind} rule learnt: the val labels are all {'present' if not absent.sum() else 'absent'}"
            print(f"calibrated: {info['note']}")
        drops[kind] = (train.labels > 0) & (np.nan_to_num(p, nan=0.0) > DECISION)
        p_absent[kind] = p
        summary[kind] = info
    return Estimate(drops["audio"], drops["visual"], {"p_absent": p_absent}, {"calibration": summary})
