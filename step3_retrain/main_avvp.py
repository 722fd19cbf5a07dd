"""Stage 3: retrain the network from scratch with the modality-aware labels of stage 2.

    python main_avvp.py --mode retrain --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
    python main_avvp.py --mode retrain --folds 2  # also models/fold1of2/, fold2of2/ for stage 2 to re-estimate from

Ablations: edit the defaults of the "stage 3 method" group below (or pass the flags).
"""
import argparse
import functools
import os
import sys

from avvp import config, engine, llp, stage
from avvp.config import add_loss_args, number
from avvp.errors import cli
from avvp.model import loss_options

import dataloader
import denoise
import model

STAGE = "stage3"
# --recipe robust: the video-level target keeps a label whose audio label stage 2 dropped (the released
# quirk zeroes it too, which doubles the cost of a wrong audio drop; same mean, a third of the seed
# spread); and two fold models, from which stage 2 re-estimates the labels
ROBUST = {"quirk_video_target": False, "folds": 2}


def get_args(argv=None):
    p = stage.stage_parser(__doc__, train_mode="retrain")
    g = p.add_argument_group("stage 3 method (the released recipe; edit these defaults for ablations)")
    g.add_argument("--label_ma", default="../step2_find_exchange/outputs/modality_aware_labels.csv",
                   help="modality-aware label CSV written by stage 2")
    g.add_argument("--quirk_video_target", action=argparse.BooleanOptionalAction, default=True,
                   help="released quirk: a dropped audio label also zeroes the class in the video-level target")
    g.add_argument("--smooth_dropped", action=argparse.BooleanOptionalAction, default=True,
                   help="visual smoothing also applies to dropped visual labels (target 0.05); "
                        "--no-smooth_dropped sets them to exactly 0")
    g.add_argument("--denoise", choices=["off", "joint"], default="off",
                   help="off: train on stage 2's labels as they are (released); joint: train on the weak labels "
                        "and drop, before each epoch and per class, those whose loss over the train split is large "
                        "in one modality and small in the other (JoMoLD's rule), as many as stage 2 drops of that "
                        "class (denoise.py); the targets follow the two flags above")
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: after the model, train K more on the same labels, the k-th on the train videos "
                        "outside seeded fold k of K (models/fold<k>of<K>/), so that stage 2 --folds K "
                        "--model_save_dir ../step3_retrain/models/ can re-estimate the labels with models that "
                        "never trained on the video they read (1: none, the released recipe)")
    add_loss_args(g, contrastive_weight=1.0)  # 0 gives the paper's "MA, labels only"
    config.add_recipe_arg(g, ROBUST)
    args = config.parse_with_recipe(p, argv, ROBUST)
    if args.folds > 1 and args.denoise != "off":
        typed = any(a == "--folds" or a.startswith("--folds=") for a in (argv if argv is not None else sys.argv[1:]))
        if args.recipe == "robust" and not typed:
            p.error(f"--recipe robust trains fold models on stage 2's labels, which --denoise {args.denoise} replaces: "
                    f"use one of the two (or add --folds 1 to keep the rest of the robust recipe)")
        p.error(f"--folds {args.folds} trains on stage 2's labels; it does not combine with --denoise {args.denoise}")
    return args


@cli
def main(argv=None):
    args = get_args(argv)
    device = config.setup(args.seed, args.device, args.threads)
    net = model.MMIL_Net(frame_pool=args.frame_pool).to(device)
    if args.mode != "retrain":  # val | test | parse: use the trained checkpoint
        stage.use_checkpoint(args, STAGE, net, device, train_mode="retrain")
        return

    # 1. stage 2's modality-aware labels, aligned to the train split; the features of the three splits
    config.check_output_file(args.model_save_dir, args.checkpoint)
    train, val, test, audio, visual = dataloader.load_splits(
        config.feature_source(args), args.label_ma, args.label_train, args.label_val, args.label_test,
        args.eval_audio, args.eval_visual, device)
    # 2. targets: a label stage 2 dropped from a modality is not that modality's target
    make_targets = functools.partial(model.targets, train.labels, visual_smoothing=args.visual_smoothing,
                                     quirk=args.quirk_video_target, smooth_dropped=args.smooth_dropped)
    targets = make_targets(audio, visual)
    config.check_folds(args.folds, len(train))
    y = train.labels > 0
    print(f"stage 3: {len(train)} train videos, {int(y.sum())} weak labels; modality-aware labels from "
          f"{args.label_ma}: {int((y & (audio == 0)).sum())} audio and {int((y & (visual == 0)).sum())} visual dropped")
    denoiser = None
    if args.denoise == "joint":  # JoMoLD: the drops redrawn from the network's own losses before each epoch
        ratio_a, ratio_v = denoise.drop_ratios(train.labels, audio, visual)
        denoiser = denoise.JointDenoiser(train, ratio_a, ratio_v, args.visual_smoothing, make_targets,
                                         args.eval_batch_size)
        print(f"--denoise joint: training on the weak labels; per class, up to stage 2's share of drops goes "
              f"from each modality (audio {ratio_a.mean():.3f}, visual {ratio_v.mean():.3f} on average)")
    # 3. train: val every epoch, test at the end, checkpoint saved
    losses = loss_options(args.contrastive_weight, args.temperature, args.contrastive_smoothing)
    settings = config.training_settings(args)
    extra = {"label_ma": args.label_ma}
    engine.fit(net, train, targets, val, test, losses, settings, STAGE, device, extra, refresh_targets=denoiser)
    # 4. --folds K: the cross-fitting models stage 2 can re-estimate the labels from
    if args.folds > 1:
        engine.train_folds(args.folds, args.frame_pool, train, targets, val, test, losses, settings, STAGE, device,
                           extra)
    if denoiser is not None:
        dropped = denoiser.dropped.cpu().numpy()                                  # (N, 25, 2)
        out = os.path.join(args.model_save_dir, "denoised_labels.csv")
        llp.write_modality_labels(out, train.filenames, y, y & ~dropped[..., 0], y & ~dropped[..., 1])
        n_a, n_v = denoiser.counts()
        print(f"denoised labels (after the last epoch): {n_a} audio and {n_v} visual dropped; written to {out}")


if __name__ == "__main__":
    main()
