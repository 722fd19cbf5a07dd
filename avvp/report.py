"""Summary of a pipeline run: stage 1 and stage 3 test tables and stage 2's label quality.

    python -m avvp.report [--stage1 DIR] [--stage2 DIR] [--stage3 DIR]
"""
import argparse
import json
import math
import os

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from .evaluate import KEYS, format_table
from .errors import AVVPError, cli
from .llp import CLASSES


def normalisation_is_undefined(scale):
    """True when stage 2's per-class error scale of a kind (a_class or v_class, C values) is NaN
    for every class: stage 1 made no thresholded error of that kind on the train labels, so the
    released normalisation err / max(err) is 0/0 and no label of that kind can be dropped. Not a
    failure of the run: at demo scale stage 1 can fit every weak label (docs/RESULTS.md, "Why 2,500
    train videos")."""
    return len(scale) > 0 and not any(math.isfinite(float(x)) for x in scale)


def undefined_normalisation_note(kind):
    """Why no `kind` label was dropped, in words (stage 2 prints it, and so does the summary)."""
    return (f"stage 1 made no {kind} error on the train labels, so the per-class normalisation is 0/0 "
            f"and no {kind} label can be dropped (with --folds 2 in stages 1 and 2 every train video is read "
            f"by a model that never trained on it)")


def drop_quality(drop, weak, truth_present, per_class=True):
    """Precision / recall / F1 of dropped labels against truth, overall and per class (keyed by
    class name, classes with a weak label only): a drop is right when the modality truly lacks c."""
    y = weak > 0
    absent = y & ~truth_present
    n_drop, n_absent, n_weak = int(drop.sum()), int(absent.sum()), int(y.sum())
    # NaN where undefined: precision without a drop, recall without a truly absent label
    precision, recall, f1, _ = precision_recall_fscore_support(absent[y], drop[y], average="binary",
                                                               zero_division=np.nan)
    q = {"dropped": n_drop, "correct": int((drop & absent).sum()), "truly_absent": n_absent, "weak_labels": n_weak,
         "precision": float(precision), "recall": float(recall), "f1": float(f1),
         "base_rate": n_absent / max(n_weak, 1)}
    if per_class:
        q["per_class"] = {name: drop_quality(drop[:, c], weak[:, c], truth_present[:, c], per_class=False)
                          for c, name in enumerate(CLASSES) if y[:, c].any()}
    return q


def count_lines(weak, drop_a, drop_v):
    """Per-class drop counts, one line per class with a weak label, under a header."""
    rows = [("", "weak", "drop_audio", "drop_visual")]
    for c, name in enumerate(CLASSES):
        n = int((weak[:, c] > 0).sum())
        if n:
            rows.append((name, str(n), str(int(drop_a[:, c].sum())), str(int(drop_v[:, c].sum()))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join([r[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(r[1:], widths[1:])]).rstrip()
            for r in rows]


def quality_lines(kind, q):
    """The per-class precision / recall / F1 of one modality's drops, one line per class with a drop
    or a truly absent label."""
    rows = [(name, c) for name, c in q["per_class"].items() if c["dropped"] or c["truly_absent"]]
    width = max([len(n) for n, _ in rows], default=0)
    return [f"  {kind} {name.ljust(width)}  dropped {c['dropped']:4d}  truly absent {c['truly_absent']:4d}  "
            f"precision {precision_text(c)}  recall {c['recall']:.3f}  F1 {c['f1']:.3f}" for name, c in rows]


def drop_report(weak, drop_a, drop_v, truth):
    """Stage 2's drops against the dense train truth (audio, visual) (N, C, T): printed overall and per
    class; returns {"audio": drop_quality, "visual": drop_quality}."""
    quality = {kind: drop_quality(drop, weak, t.any(axis=2))
               for kind, drop, t in (("audio", drop_a, truth[0]), ("visual", drop_v, truth[1]))}
    for kind, q in quality.items():
        print(f"dropped {kind} labels vs truth: precision {precision_text(q)} recall {q['recall']:.3f} "
              f"({q['correct']}/{q['dropped']} right; {q['truly_absent']} of {q['weak_labels']} weak labels "
              f"truly not {'audible' if kind == 'audio' else 'visible'}, base rate {q['base_rate']:.3f}; "
              f"F1 {q['f1']:.3f})")
    print("per class:")
    print("\n".join(quality_lines("audio", quality["audio"]) + quality_lines("visual", quality["visual"])))
    return quality


def precision_text(quality):
    """A drop-quality dict's precision, or why there is none (stage 2 and the summary print it)."""
    return f"{quality['precision']:.3f}" if quality["dropped"] else "n/a (none dropped)"


def read_json(path):
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: not found (did that stage run?)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage1", default="step1_train_base_model/models", help="stage 1 model_save_dir")
    p.add_argument("--stage2", default="step2_find_exchange/outputs", help="stage 2 output_dir")
    p.add_argument("--stage3", default="step3_retrain/models", help="stage 3 model_save_dir")
    a = p.parse_args(argv)
    tables = {}
    for name, d in (("stage 1 (base model)", a.stage1), ("stage 3 (retrained, MA)", a.stage3)):
        tables[name] = m = read_json(os.path.join(d, "test_metrics.json"))
        print(format_table({k: m[k] for k in KEYS}, title=f"{name}: test set"))
    meta = read_json(os.path.join(a.stage2, "estimate_meta.json"))
    print(f"stage 2: dropped {meta['dropped_audio']} audio and {meta['dropped_visual']} visual labels "
          f"of {meta['weak_labels']} weak labels")
    for kind, q in meta.get("quality", {}).items():
        scale = meta.get("a_class" if kind == "audio" else "v_class") or []
        if q["dropped"] == 0 and normalisation_is_undefined(scale):
            print(f"stage 2 dropped no {kind} label: {undefined_normalisation_note(kind)}; {q['truly_absent']} of "
                  f"{q['weak_labels']} weak labels are truly not {'audible' if kind == 'audio' else 'visible'}")
            continue
        print(f"stage 2 dropped {kind} labels: precision {precision_text(q)}, recall {q['recall']:.3f} "
              f"(base rate {q['base_rate']:.3f})")
    s1, s3 = tables.values()
    print("stage 3 against stage 1, segment level: " + ", ".join(
        f"{name} {s1[k]:.2f} -> {s3[k]:.2f} ({s3[k] - s1[k]:+.2f})" for name, k in
        (("V", "seg_v"), ("AV", "seg_av"), ("Type@AV", "seg_type"))))


if __name__ == "__main__":
    main()
