"""Stage 1: train the base model (HAN + MMIL pooling + audio-visual contrastive loss).

    python main_avvp.py --mode train --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test      # evaluate models/MMIL_Net.pt on the test split
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
"""
from avvp import engine, parse
from avvp.utils import cli

import dataloader
import model as stage_model

STAGE = "stage1"


def get_args(argv=None):
    p = engine.argparser(__doc__)
    p.add_argument("--mode", choices=["train", "val", "test", "parse"], default="train",
                   help="what to do (parse: write predicted event tables, see --parse_out)")
    engine.add_common_args(p, epochs=12)
    parse.add_parse_args(p)
    return engine.parse_args(p, argv)


@cli
def main(argv=None):
    args = get_args(argv)
    device = engine.setup(args)
    net = stage_model.MMIL_Net(frame_pool=args.frame_pool).to(device)
    if args.mode == "parse":
        parse.run(args, STAGE, net, device, hint="train it first: python main_avvp.py --mode train")
        return
    if args.mode in ("val", "test"):
        csv = args.label_val if args.mode == "val" else args.label_test
        engine.eval_only(args, STAGE, net, device, csv, args.mode, hint="train it first: python main_avvp.py --mode train")
        return
    train, val, test = dataloader.load_data(args, device)
    trainer = engine.Trainer(args, net, train, dataloader.targets(train, args), device)
    print(f"stage 1: {len(train)} train / {len(val)} val / {len(test)} test videos, "
          f"{args.epochs} epochs, contrastive weight {args.contrastive_weight}")
    engine.fit(args, trainer, val, test, STAGE, device)
    print(f"saved {engine.checkpoint_path(args)}")


if __name__ == "__main__":
    main()
