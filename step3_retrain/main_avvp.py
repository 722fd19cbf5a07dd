"""Stage 3: retrain the network from scratch with the modality-aware labels of stage 2.

    python main_avvp.py --mode retrain --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
    python main_avvp.py --mode retrain --folds 2  # also models/fold1of2/, fold2of2/ for stage 2 to re-estimate from

Ablations: edit the defaults of the "stage 3 method" group below (or pass the flags).
"""
import argparse
import os

from avvp import config, data, llp, stage, training
from avvp.checkpoints import checkpoint_path
from avvp.config import add_loss_args, number
from avvp.errors import AVVPError, cli

import dataloader
import denoise
import model as stage_model

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
                        "class (denoise.py)")
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: after the model, train K more on the same labels, the k-th on the train videos "
                        "outside seeded fold k of K (models/fold<k>of<K>/), so that stage 2 --folds K "
                        "--model_save_dir ../step3_retrain/models/ can re-estimate the labels with models that "
                        "never trained on the video they read (1: none, the released recipe)")
    g.add_argument("--denoise_warmup", type=number(0), default=1.0,
                   help="--denoise joint: epochs over which the share of labels dropped ramps up from 0")
    # contrastive_weight 0 gives the paper's "MA, labels only"
    add_loss_args(g, contrastive_weight=1.0, temperature=0.2, contrastive_smoothing=0.1, contrastive_form="released",
                  visual_smoothing=0.1)
    config.add_recipe_arg(g, ROBUST)
    args = config.parse_with_recipe(p, argv, ROBUST)
    if args.folds > 1 and args.denoise != "off":
        p.error(f"--folds {args.folds} trains on stage 2's labels; it does not combine with --denoise {args.denoise}")
    return args


@cli
def main(argv=None):
    args = get_args(argv)
    started = stage.start_stage(args, STAGE, stage_model.MMIL_Net, train_mode="retrain")
    if started is None:  # --mode val | test | parse has run
        return
    device, net = started
    # read the hand-off first: a bad CSV should fail before minutes of feature loading
    if not os.path.isfile(args.label_ma):
        raise AVVPError(f"{args.label_ma}: modality-aware label file not found; run stage 2 first: "
                        f"cd ../step2_find_exchange && python main_avvp.py --mode estimate_labels (or pass --label_ma)")
    table = llp.read_modality_labels(args.label_ma)
    train = data.load_split(args, args.label_train, device, name="train")
    audio, visual = dataloader.align_modality_labels(table, args.label_ma, train)
    val, test = data.load_eval_splits(args, device)
    t = dataloader.targets(train.labels, audio, visual, args.visual_smoothing, args.quirk_video_target,
                           args.smooth_dropped)
    y = train.labels > 0
    print(f"stage 3: {len(train)} train videos, {int(y.sum())} weak labels; modality-aware labels from "
          f"{args.label_ma}: {int((y & (audio == 0)).sum())} audio and {int((y & (visual == 0)).sum())} visual dropped")
    denoiser = None
    if args.denoise == "joint":
        ratio_a, ratio_v = denoise.drop_ratios(train.labels, audio, visual)
        denoiser = denoise.JointDenoiser(train.labels, ratio_a, ratio_v, args.denoise_warmup,
                                         args.visual_smoothing, device)
        t = (y.astype("float32"), *t[1:])  # the video target stays the weak labels
        print(f"--denoise joint: training on the weak labels; per class, up to stage 2's share of drops goes "
              f"from each modality (audio {ratio_a.mean():.3f}, visual {ratio_v.mean():.3f} on average)")
    trainer = training.Trainer(args, net, train, t, device, stage_model.loss_options(args), denoiser)
    training.fit(args, trainer, val, test, STAGE, device, extra={"label_ma": args.label_ma})
    print(f"saved {checkpoint_path(args)}")
    if args.folds > 1:
        training.train_folds(args, train, t, val, test, STAGE, device, stage_model.loss_options(args),
                             extra={"label_ma": args.label_ma})
    if denoiser is not None:
        dropped = denoiser.dropped.cpu().numpy()                                  # (N, 25, 2)
        out = os.path.join(args.model_save_dir, "denoised_labels.csv")
        llp.write_modality_labels(out, train.filenames, y, y & ~dropped[..., 0], y & ~dropped[..., 1])
        n_a, n_v = denoiser.counts()
        print(f"denoised labels (after the last epoch): {n_a} audio and {n_v} visual dropped; "
              f"written to {out}")


if __name__ == "__main__":
    main()
