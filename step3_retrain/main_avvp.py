"""Stage 3: retrain the network from scratch with the modality-aware labels of stage 2.

    python main_avvp.py --mode retrain --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
"""
import argparse
import os

from avvp import engine, parse, llp
from avvp.utils import AVVPError, cli

import dataloader
import model as stage_model

STAGE = "stage3"


def get_args(argv=None):
    p = engine.argparser(__doc__)
    p.add_argument("--mode", choices=["retrain", "val", "test", "parse"], default="retrain",
                   help="what to do (parse: write predicted event tables, see --parse_out)")
    engine.add_common_args(p, epochs=12)
    parse.add_parse_args(p)
    g = p.add_argument_group("stage 3")
    g.add_argument("--label_ma", default="../step2_find_exchange/outputs/modality_aware_labels.csv",
                   help="modality-aware label CSV written by stage 2")
    g.add_argument("--quirk_video_target", action=argparse.BooleanOptionalAction, default=True,
                   help="released quirk: a dropped audio label also zeroes the class in the video-level target")
    g.add_argument("--smooth_dropped", action=argparse.BooleanOptionalAction, default=True,
                   help="visual smoothing also applies to dropped visual labels (target 0.05); "
                        "--no-smooth_dropped sets them to exactly 0")
    return engine.parse_args(p, argv)


@cli
def main(argv=None):
    args = get_args(argv)
    device = engine.setup(args)
    net = stage_model.MMIL_Net(frame_pool=args.frame_pool).to(device)
    if args.mode == "parse":
        parse.run(args, STAGE, net, device, hint="train it first: python main_avvp.py --mode retrain")
        return
    if args.mode in ("val", "test"):
        csv = args.label_val if args.mode == "val" else args.label_test
        engine.eval_only(args, STAGE, net, device, csv, args.mode, hint="train it first: python main_avvp.py --mode retrain")
        return
    # read the hand-off first: a bad CSV should fail before minutes of feature loading
    if not os.path.isfile(args.label_ma):
        raise AVVPError(f"{args.label_ma}: modality-aware label file not found; run stage 2 first: "
                        f"cd ../step2_find_exchange && python main_avvp.py --mode estimate_labels (or pass --label_ma)")
    table = llp.read_modality_labels(args.label_ma)
    train = engine.load_split(args, args.label_train, device, name="train")
    audio, visual = dataloader.align_modality_labels(table, args.label_ma, train)
    val = engine.load_split(args, args.label_val, device, truth=True, name="val")
    test = engine.load_split(args, args.label_test, device, truth=True, name="test")
    t = dataloader.targets(train.labels, audio, visual, args.visual_smoothing, args.quirk_video_target,
                           args.smooth_dropped)
    y = train.labels > 0
    print(f"stage 3: {len(train)} train videos, {int(y.sum())} weak labels; modality-aware labels from "
          f"{args.label_ma}: {int((y & (audio == 0)).sum())} audio and {int((y & (visual == 0)).sum())} visual dropped")
    trainer = engine.Trainer(args, net, train, t, device)
    engine.fit(args, trainer, val, test, STAGE, device, extra={"label_ma": args.label_ma})
    print(f"saved {engine.checkpoint_path(args)}")


if __name__ == "__main__":
    main()
