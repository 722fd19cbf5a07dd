"""Stage 1: train the base model (HAN + MMIL pooling + audio-visual contrastive loss).

    python main_avvp.py --mode train --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test      # evaluate models/MMIL_Net.pt on the test split
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
"""
import gc

if __name__ == "__main__":  # run as a program: no collector passes while torch is imported (~0.3 s);
    gc.disable()            # run_program freezes what the imports built and turns the collector back on

from avvp import engine  # noqa: E402
from avvp.utils import cli, run_program  # noqa: E402

import dataloader  # noqa: E402
import model as stage_model  # noqa: E402

STAGE = "stage1"


def get_args(argv=None):
    p = engine.stage_parser(__doc__, train_mode="train")
    return engine.parse_args(p, argv)


@cli
def main(argv=None):
    args = get_args(argv)
    started = engine.start_stage(args, STAGE, stage_model.MMIL_Net, train_mode="train")
    if started is None:  # --mode val | test | parse has run
        return
    device, net = started
    train, val, test = dataloader.load_data(args, device)
    trainer = engine.Trainer(args, net, train, dataloader.targets(train, args), device)
    print(f"stage 1: {len(train)} train / {len(val)} val / {len(test)} test videos, "
          f"{args.epochs} epochs, contrastive weight {args.contrastive_weight}")
    engine.fit(args, trainer, val, test, STAGE, device)
    print(f"saved {engine.checkpoint_path(args)}")


if __name__ == "__main__":
    run_program(main, fast_exit=True)
