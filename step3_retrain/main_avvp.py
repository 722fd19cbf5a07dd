"""Stage 3: retrain the network from scratch with the modality-aware labels of stage 2.

    python main_avvp.py --mode retrain --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/

Ablations: edit the defaults of the "stage 3 method" group below (or pass the flags).
"""
import argparse
import os

from avvp import data, llp, stage, training
from avvp.checkpoints import checkpoint_path
from avvp.config import add_loss_args
from avvp.errors import AVVPError, cli

import dataloader
import model as stage_model

STAGE = "stage3"


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
    # contrastive_weight 0 gives the paper's "MA, labels only"
    add_loss_args(g, contrastive_weight=1.0, temperature=0.2, contrastive_smoothing=0.1, contrastive_form="released",
                  visual_smoothing=0.1)
    return p.parse_args(argv)


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
    trainer = training.Trainer(args, net, train, t, device, stage_model.loss_options(args))
    training.fit(args, trainer, val, test, STAGE, device, extra={"label_ma": args.label_ma})
    print(f"saved {checkpoint_path(args)}")


if __name__ == "__main__":
    main()
