"""Stage 2: estimate modality-aware labels by exchanging audio and visual tracks.

    python main_avvp.py --mode estimate_labels --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18

Loads stage 1's checkpoint (or, with --folds K, its K cross-fitting models; or stage 3's, to
re-estimate the labels: --model_save_dir ../step3_retrain/models/), pairs every train video with
seeded random partners sharing no class, runs the frozen model on the original, visual-swapped and
audio-swapped inputs (model.py), lets the chosen estimator decide which labels to drop
(estimators.py; `released`: MA's thresholds), and writes `outputs/modality_aware_labels.csv` (read
by stage 3), `outputs/dropped_labels.csv` (the evidence behind each dropped label) and
`outputs/estimate_meta.json`.
"""
from avvp import config, data, report
from avvp.config import number
from avvp.errors import cli
from avvp.timing import clock

import dataloader
import estimators
import model

# --recipe robust: every train video read by a model blind to it, swapped with 8 partners, and a label
# dropped where the val split's dense truth says that evidence more likely means absent than present
ROBUST = {"folds": 2, "partners": 8, "estimator": "calibrated"}
MAX_PARTNERS = 64  # each partner is one more pair of passes over the train split (50: 8.9 s on 40 videos)


def get_args(argv=None):
    p = config.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["estimate_labels"], default="estimate_labels", help="what to do")
    config.add_common_args(p, training=False)
    p.set_defaults(model_save_dir="../step1_train_base_model/models/")
    g = p.add_argument_group("stage 2 method (the released rule; edit these defaults for ablations)")
    g.add_argument("--estimator", choices=sorted(estimators.ESTIMATORS), default="released",
                   help="which labels to drop, given the swap evidence (estimators.py): released = MA's rule, "
                        "thresholds scaled by the model's per-class train error; calibrated = drop where "
                        "P(modality absent | evidence) > 0.5, fit on the val split's dense truth (--eval_audio / "
                        "--eval_visual, which LLP ships), meant with --folds")
    g.add_argument("--threshold_factor", type=number(0, 1), default=0.5,
                   help="released: drop a label when both swapped probs fall below factor * normalised class error "
                        "(0 .. 1; at 1 the class of largest error drops every label)")
    g.add_argument("--partners", type=number(1, MAX_PARTNERS, kind=int), default=1,
                   help=f"swap partners per video, the swapped probs averaged over them (1: the released swap; "
                        f"at most {MAX_PARTNERS})")
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: read each train video with the fold model that never trained on it "
                        "(<model_save_dir>/fold<k>of<K>/, from stage 1 or stage 3 --folds K), so that memorised train "
                        "labels neither keep a label nor make the class error 0 (1: the base model, released)")
    config.add_recipe_arg(g, ROBUST)
    g = p.add_argument_group("stage 2 files")
    g.add_argument("--output_dir", default="outputs/", help="where the label CSVs go")
    g.add_argument("--output", default="modality_aware_labels.csv", help="label CSV name (stage 3 reads it)")
    g.add_argument("--train_truth_audio", default="../data/synthetic_train_eval_audio.csv",
                   help="dense audio truth of train videos (synthetic data only); scored when present")
    g.add_argument("--train_truth_visual", default="../data/synthetic_train_eval_visual.csv",
                   help="dense visual truth of train videos (synthetic data only); scored when present")
    return config.parse_with_recipe(p, argv, ROBUST)


@cli
def main(argv=None):
    args = get_args(argv)
    device = config.setup(args.seed, args.device, args.threads)
    config.check_output_file(args.output_dir, args.output, "--output", "--output_dir")  # fail before any work
    estimate = estimators.ESTIMATORS[args.estimator]

    # 1. the frozen model: stage 1's (or 3's), or with --folds K its K fold models; the splits
    with clock("load"):
        models = model.load_models(args.model_save_dir, args.checkpoint, args.folds, device)
    source = config.feature_source(args, pool_frames=models[0].net.frame_pool == "early")
    train = data.load_split(source, args.label_train, device, name="train")
    config.check_folds(args.folds, len(train))
    val = None
    if estimate.reads_val:  # the val split with its dense truth; every fold model is blind to val
        val = dataloader.load_val(source, args.label_val, args.eval_audio, args.eval_visual, device)
        if args.folds == 1:
            print(f"note: --estimator {args.estimator} without --folds: the base model reads train videos it "
                  f"trained on, and unseen val videos; their evidence differs")

    # 2. the swap evidence: every video read with K partners that share no class with it
    with clock("swap passes"):
        partners = dataloader.pick_partners(train.labels, args.seed, train.filenames, draws=args.partners)
        evidence = model.swap_evidence(models, train, partners, args.eval_batch_size, out_of_fold=args.folds > 1)
        val_evidence = None
        if val is not None:  # one run per model, every model blind to val, the same partners for each
            val_partners = dataloader.pick_partners(val.labels, args.seed, val.filenames, draws=args.partners)
            present = dataloader.present(val)
            val_evidence = [model.swap_evidence([m], val, val_partners, args.eval_batch_size, present=present)
                            for m in models]
    print(f"swapped passes over {len(train)} videos, {args.partners} partner(s) each, in {clock.last:.2f}s")

    # 3. the estimator: evidence -> the labels to drop
    est = estimate(evidence, val_evidence, **{k: getattr(args, k) for k in estimate.options})
    weak = train.labels
    print("per-class drop counts:\n" + "\n".join(report.count_lines(weak, est.drop_audio, est.drop_visual)))
    print(f"dropped {int(est.drop_audio.sum())} audio and {int(est.drop_visual.sum())} visual labels of "
          f"{int((weak > 0).sum())}")

    # 4. scored against the train truth where it is known (synthetic data)
    meta = dataloader.run_meta(vars(args), models, args.folds > 1, est, weak)
    truth = dataloader.load_train_truth(args.train_truth_audio, args.train_truth_visual, train.filenames)
    if truth is not None:
        meta["quality"] = report.drop_report(weak, est.drop_audio, est.drop_visual, truth)

    # 5. the three files, replaced together
    print(f"wrote {dataloader.write_outputs(args.output_dir, args.output, evidence, est, meta)}")
    print(clock.line())


if __name__ == "__main__":
    main()
