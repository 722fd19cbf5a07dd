"""Stage 2: estimate modality-aware labels by exchanging audio and visual tracks.

    python main_avvp.py --mode estimate_labels --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18

Loads stage 1's checkpoint (or, with --folds K, its K cross-fitting models; or stage 3's, to
re-estimate the labels: --model_save_dir ../step3_retrain/models/), pairs every train
video with a seeded random partner sharing no class, runs the frozen model on the original,
visual-swapped and audio-swapped inputs, drops labels by MA's thresholds (or, with --calibrate val,
where the same swaps on the val split, against its dense truth, say the modality is more likely
absent than present), and writes `outputs/modality_aware_labels.csv` (read by
stage 3), `outputs/dropped_labels.csv` (the swap probabilities behind each dropped label) and
`outputs/estimate_meta.json`.
"""
import json
import os

import numpy as np
import pandas as pd

from avvp import config, data, llp, report
from avvp.checkpoints import checkpoint_path, fold_dir
from avvp.config import number
from avvp.errors import cli
from avvp.files import atomic_group, atomic_write_text, ensure_writable_dir
from avvp.predict import predict
from avvp.report import drop_quality
from avvp.timing import clock

import calibration
import dataloader
import model as stage_model

# --recipe robust: every train video read by a model blind to it, swapped with 8 partners, and a label
# dropped where the val split's truth says that evidence more likely means absent than present
ROBUST = {"folds": 2, "partners": 8, "calibrate": "val"}


def get_args(argv=None):
    p = config.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["estimate_labels"], default="estimate_labels", help="what to do")
    config.add_common_args(p, training=False)
    p.set_defaults(model_save_dir="../step1_train_base_model/models/")
    g = p.add_argument_group("stage 2 method (the released rule; edit these defaults for ablations)")
    g.add_argument("--error_scale", choices=["class", "val", "none"], default="class",
                   help="class: thresholds scaled by stage 1's per-class train error / its max (released); "
                        "val: the same, with the error measured on the val split's weak labels (--label_val); "
                        "none: a fixed threshold of --threshold_factor for every class")
    g.add_argument("--threshold_factor", type=number(0), default=0.5,
                   help="drop a label when both swapped probs fall below factor * normalised class error")
    g.add_argument("--partners", type=number(1, kind=int), default=1,
                   help="swap partners per video, the swapped probs averaged over them (1: the released rule)")
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: read each train video with the fold model that never trained on it "
                        "(<model_save_dir>/fold<k>of<K>/, from stage 1 or stage 3 --folds K), so that memorised train "
                        "labels neither keep a label nor make the class error 0 (1: the base model, released)")
    g.add_argument("--calibrate", choices=["none", "val"], default="none",
                   help="none: drop by the threshold rule above (released); val: drop a label when P(its modality "
                        "is absent | its six swap probabilities and their class means) > 0.5, that probability a "
                        "logistic regression fit on the same swaps of the val split against its dense truth "
                        "(--eval_audio / --eval_visual, which LLP ships for val); meant with --folds (calibration.py)")
    config.add_recipe_arg(g, ROBUST)
    g = p.add_argument_group("stage 2 files")
    g.add_argument("--output_dir", default="outputs/", help="where the label CSVs go")
    g.add_argument("--output", default="modality_aware_labels.csv", help="label CSV name (stage 3 reads it)")
    g.add_argument("--train_truth_audio", default="../data/synthetic_train_eval_audio.csv",
                   help="dense audio truth of train videos (synthetic data only); scored when present")
    g.add_argument("--train_truth_visual", default="../data/synthetic_train_eval_visual.csv",
                   help="dense visual truth of train videos (synthetic data only); scored when present")
    return config.parse_with_recipe(p, argv, ROBUST)


def quality_lines(kind, q):
    """The per-class precision / recall / F1 of one modality's drops, one line per class with a drop
    or a truly absent label."""
    rows = [(name, c) for name, c in q["per_class"].items() if c["dropped"] or c["truly_absent"]]
    width = max([len(n) for n, _ in rows], default=0)
    return [f"  {kind} {name.ljust(width)}  dropped {c['dropped']:4d}  truly absent {c['truly_absent']:4d}  "
            f"precision {report.precision_text(c)}  recall {c['recall']:.3f}  F1 {c['f1']:.3f}" for name, c in rows]


def evidence_table(filenames, partners, orig, vis_swapped, aud_swapped, drop_a, drop_v, thr_a, thr_v, p_absent=None):
    """One row per dropped label: video, class, its partners (K, N) (space-separated names), the
    swapped (mean over partners) and original probabilities and the threshold (C,) of the released
    rule; with --calibrate val, p_absent {"audio", "visual"} (N, C): the probability the drop rests on."""
    names, classes = np.asarray(filenames, dtype=object), np.asarray(llp.CLASSES, dtype=object)
    partner = np.asarray([" ".join(names[p] for p in col) for col in np.asarray(partners).T], dtype=object)
    parts = []
    for kind, drop, swapped, thr in (("audio", drop_a, vis_swapped, thr_a), ("visual", drop_v, aud_swapped, thr_v)):
        vi, ci = np.nonzero(drop)
        parts.append(pd.DataFrame({
            "filename": names[vi], "event_label": classes[ci], "dropped": np.full(len(vi), kind, dtype=object),
            "partner": partner[vi],
            "swapped": np.full(len(vi), "visual" if kind == "audio" else "audio", dtype=object),
            "audio_prob_swapped": swapped["audio_prob"][vi, ci].round(6),
            "visual_prob_swapped": swapped["visual_prob"][vi, ci].round(6),
            "audio_prob_original": orig["audio_prob"][vi, ci].round(6),
            "visual_prob_original": orig["visual_prob"][vi, ci].round(6),
            "threshold": thr[ci].round(6)}))
        if p_absent is not None:
            parts[-1]["p_absent"] = p_absent[kind][vi, ci].round(6)
    return pd.concat(parts, ignore_index=True)


def count_lines(weak, drop_a, drop_v, a_class, v_class):
    """Per-class drop counts, one line per class with a weak label, under a header."""
    rows = [("", "weak", "drop_audio", "drop_visual", "a_class", "v_class")]
    for c, name in enumerate(llp.CLASSES):
        n = int((weak[:, c] > 0).sum())
        if n:
            rows.append((name, str(n), str(int(drop_a[:, c].sum())), str(int(drop_v[:, c].sum())),
                         f"{a_class[c]:.3f}", f"{v_class[c]:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join([r[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(r[1:], widths[1:])]).rstrip()
            for r in rows]


@cli
def main(argv=None):
    args = get_args(argv)
    device = config.setup(args)
    ensure_writable_dir(args.output_dir, "--output_dir")  # fail before any work
    paths = [checkpoint_path(args)] if args.folds == 1 else [
        os.path.join(fold_dir(args.model_save_dir, k, args.folds), args.checkpoint) for k in range(1, args.folds + 1)]
    models = []
    with clock("load"):
        for path in paths:
            net, ckpt = stage_model.load_frozen(path, args, device, args.folds)
            models.append((net, ckpt, path))
            print(f"stage 2: loaded {path} (stage {ckpt.get('stage')}, epoch {ckpt.get('epoch')})")
    net, ckpt, ckpt_path = models[0]
    args.frame_pool = net.frame_pool
    train = data.load_split(args, args.label_train, device, name="train")
    weak = train.labels
    val = None
    if args.error_scale == "val" or args.calibrate == "val":  # every fold model is blind to val
        eval_truth = data.read_eval_truth(args) if args.calibrate == "val" else None
        val = data.load_split(args, args.label_val, device, truth=eval_truth, name="val")
        if args.calibrate == "val":  # before any pass: without val's truth there is nothing to learn from
            dataloader.check_val_truth(val, args.eval_audio, args.eval_visual)
    with clock("swap passes"):
        partners = dataloader.pick_partners(weak, args.seed, train.filenames, draws=args.partners)  # (K, N)
        if args.folds == 1:
            orig, vis, aud = stage_model.swap_probs(net, train, partners, args.eval_batch_size)
        else:
            orig, vis, aud = stage_model.out_of_fold_probs(models, train, partners, args.eval_batch_size)
    print(f"swapped passes over {len(train)} videos, {args.partners} partner(s) each, in {clock.last:.2f}s")
    held_out = None
    if args.error_scale == "val":  # the class error of the fold models' mean probs
        runs = [predict(m, val, args.eval_batch_size, keys=("audio_prob", "visual_prob")) for m, _, _ in models]
        held_out = (stage_model.mean_of(runs), val.labels)
    drop_a, drop_v, a_class, v_class = stage_model.exchange_rule(weak, orig, vis, aud, args.threshold_factor,
                                                                 args.error_scale, held_out)
    p_absent = calibrated = None
    if args.calibrate == "val":  # the same swaps on val, one run per model, against val's dense truth
        if args.folds == 1:
            print("note: --calibrate val without --folds: the base model reads train videos it trained on, and "
                  "unseen val videos; their evidence differs (stage 1 and 2 --folds 2 read both unseen)")
        with clock("swap passes"):
            val_partners = dataloader.pick_partners(val.labels, args.seed, val.filenames, draws=args.partners)
            val_runs = [stage_model.swap_probs(m, val, val_partners, args.eval_batch_size) for m, _, _ in models]
        drop_a, drop_v, p_absent, calibrated = calibration.calibrated_drops(
            weak, (orig, vis, aud), val.labels, (val.gt_a.any(axis=2), val.gt_v.any(axis=2)), val_runs)
        for kind, c in calibrated.items():
            print(f"--calibrate val: {kind} rule from {c['val_labels']} val labels ({c['val_absent']} truly absent)"
                  + (f"; on val it drops {c['val_dropped']}, {c['val_dropped_right']} rightly" if "weights" in c
                     else f"; {c['note']}"))

    for kind, scale in (("audio", a_class), ("visual", v_class)):
        if args.calibrate == "none" and report.normalisation_is_undefined(scale):
            print(f"note: {report.undefined_normalisation_note(kind, 'val' if args.error_scale == 'val' else 'train')}")
    keep_a = (weak > 0) & ~drop_a
    keep_v = (weak > 0) & ~drop_v
    evidence = evidence_table(train.filenames, partners, orig, vis, aud, drop_a, drop_v,
                              args.threshold_factor * a_class, args.threshold_factor * v_class, p_absent)

    print("per-class drop counts:")
    print("\n".join(count_lines(weak, drop_a, drop_v, a_class, v_class)))
    print(f"dropped {int(drop_a.sum())} audio and {int(drop_v.sum())} visual labels of {int((weak > 0).sum())}")

    # with --folds the fold models are read, not the one model: the one checkpoint key stays empty
    one = args.folds == 1
    meta = {"args": vars(args), "model_stage": ckpt.get("stage"),
            "checkpoint": os.path.abspath(ckpt_path) if one else None, "epoch": ckpt.get("epoch") if one else None,
            "fold_checkpoints": [] if one else [os.path.abspath(p) for p in paths],
            "a_class": a_class.tolist(), "v_class": v_class.tolist(),
            "dropped_audio": int(drop_a.sum()), "dropped_visual": int(drop_v.sum()),
            "weak_labels": int((weak > 0).sum()), "train_videos": len(train)}
    if calibrated is not None:
        meta["calibration"] = calibrated
    truth = dataloader.load_truth(args, train.filenames)
    if truth is not None:
        qa = drop_quality(drop_a, weak, truth[0].any(axis=2))
        qv = drop_quality(drop_v, weak, truth[1].any(axis=2))
        meta["quality"] = {"audio": qa, "visual": qv}
        for kind, q in (("audio", qa), ("visual", qv)):
            print(f"dropped {kind} labels vs truth: precision {report.precision_text(q)} recall {q['recall']:.3f} "
                  f"({q['correct']}/{q['dropped']} right; {q['truly_absent']} of {q['weak_labels']} weak labels "
                  f"truly not {'audible' if kind == 'audio' else 'visible'}, base rate {q['base_rate']:.3f}; "
                  f"F1 {q['f1']:.3f})")
        print("per class:")
        print("\n".join(quality_lines("audio", qa) + quality_lines("visual", qv)))
    out_csv = os.path.join(args.output_dir, args.output)
    with atomic_group():  # the three files belong together: they replace the previous three together
        llp.write_modality_labels(out_csv, train.filenames, weak, keep_a, keep_v)
        llp.write_tsv(evidence, os.path.join(args.output_dir, "dropped_labels.csv"))
        atomic_write_text(os.path.join(args.output_dir, "estimate_meta.json"), json.dumps(meta, indent=2, default=str))
    print(f"wrote {out_csv}")
    print(clock.line())


if __name__ == "__main__":
    main()
