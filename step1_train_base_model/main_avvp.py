"""Stage 1: train the base model (HAN + MMIL pooling + audio-visual contrastive loss) on weak labels.

    python main_avvp.py --mode train --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test      # evaluate models/MMIL_Net.pt on the test split
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
    python main_avvp.py --mode train --folds 2  # also models/fold1of2/, fold2of2/ for stage 2 --folds 2

Ablations: edit the defaults of the "stage 1 method" group below (or pass the flags).
"""
from avvp import config, engine, stage
from avvp.config import add_loss_args, number
from avvp.errors import cli
from avvp.model import loss_options

import dataloader
import model

STAGE = "stage1"
ROBUST = {"folds": 2}  # --recipe robust: the cross-fitting models that stage 2's robust recipe reads


def get_args(argv=None):
    p = stage.stage_parser(__doc__, train_mode="train")
    g = p.add_argument_group("stage 1 method (the released recipe; edit these defaults for ablations)")
    add_loss_args(g, contrastive_weight=1.0)  # 0 gives the HAN baseline
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: after the base model, train K more, the k-th on the train videos outside "
                        "seeded fold k of K (models/fold<k>of<K>/), so that stage 2 --folds K can read every "
                        "train video with a model that never trained on it (1: none, the released recipe)")
    config.add_recipe_arg(g, ROBUST)
    return config.parse_with_recipe(p, argv, ROBUST)


@cli
def main(argv=None):
    args = get_args(argv)
    device = config.setup(args.seed, args.device, args.threads)
    net = model.MMIL_Net(frame_pool=args.frame_pool).to(device)
    if args.mode != "train":  # val | test | parse: use the trained checkpoint
        stage.use_checkpoint(args, STAGE, net, device, train_mode="train")
        return

    # 1. the weak labels and the features of the three splits
    config.check_output_file(args.model_save_dir, args.checkpoint)
    train, val, test = dataloader.load_splits(config.feature_source(args), args.label_train, args.label_val,
                                              args.label_test, args.eval_audio, args.eval_visual, device)
    # 2. targets: every weak label for the video, the audio and (smoothed) the visual prediction
    config.check_folds(args.folds, len(train))
    targets = model.targets(train.labels, args.visual_smoothing)
    # 3. train HAN + MMIL + contrastive: val every epoch, test at the end, checkpoint saved
    print(f"stage 1: {len(train)} train / {len(val)} val / {len(test)} test videos, "
          f"{args.epochs} epochs, contrastive weight {args.contrastive_weight}")
    losses = loss_options(args.contrastive_weight, args.temperature, args.contrastive_smoothing)
    settings = config.training_settings(args)
    engine.fit(net, train, targets, val, test, losses, settings, STAGE, device)
    # 4. --folds K: the cross-fitting models stage 2 --folds K reads
    if args.folds > 1:
        engine.train_folds(args.folds, args.frame_pool, train, targets, val, test, losses, settings, STAGE, device)


if __name__ == "__main__":
    main()
