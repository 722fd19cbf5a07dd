"""Stage 1: train the base model (HAN + MMIL pooling + audio-visual contrastive loss) on weak labels.

    python main_avvp.py --mode train --audio_dir ../feats/vggish/ --video_dir ../feats/res152/ --st_dir ../feats/r2plus1d_18
    python main_avvp.py --mode test      # evaluate models/MMIL_Net.pt on the test split
    python main_avvp.py --mode parse --plot 5   # event tables (+ pictures) in outputs/parse/
    python main_avvp.py --mode train --folds 2  # also models/fold1of2/, fold2of2/ for stage 2 --folds 2

Ablations: edit the defaults of the "stage 1 method" group below (or pass the flags).
"""
from avvp import config, data, stage, training
from avvp.checkpoints import checkpoint_path
from avvp.config import add_loss_args, number
from avvp.errors import cli

import dataloader
import model as stage_model

STAGE = "stage1"
ROBUST = {"folds": 2}  # --recipe robust: the cross-fitting models that stage 2's robust recipe reads


def get_args(argv=None):
    p = stage.stage_parser(__doc__, train_mode="train")
    g = p.add_argument_group("stage 1 method (the released recipe; edit these defaults for ablations)")
    # contrastive_weight 0 gives the HAN baseline
    add_loss_args(g, contrastive_weight=1.0, temperature=0.2, contrastive_smoothing=0.1, contrastive_form="released",
                  visual_smoothing=0.1)
    g.add_argument("--folds", type=number(1, kind=int), default=1,
                   help="K >= 2: after the base model, train K more, the k-th on the train videos outside "
                        "seeded fold k of K (models/fold<k>of<K>/), so that stage 2 --folds K can read every "
                        "train video with a model that never trained on it (1: none, the released recipe)")
    config.add_recipe_arg(g, ROBUST)
    return config.parse_with_recipe(p, argv, ROBUST)


@cli
def main(argv=None):
    args = get_args(argv)
    started = stage.start_stage(args, STAGE, stage_model.MMIL_Net, train_mode="train")
    if started is None:  # --mode val | test | parse has run
        return
    device, net = started
    train = data.load_split(args, args.label_train, device, name="train")
    val, test = data.load_eval_splits(args, device)
    targets = dataloader.targets(train.labels, args.visual_smoothing)
    trainer = training.Trainer(args, net, train, targets, device, stage_model.loss_options(args))
    print(f"stage 1: {len(train)} train / {len(val)} val / {len(test)} test videos, "
          f"{args.epochs} epochs, contrastive weight {args.contrastive_weight}")
    training.fit(args, trainer, val, test, STAGE, device)
    print(f"saved {checkpoint_path(args)}")
    if args.folds > 1:
        training.train_folds(args, train, targets, val, test, STAGE, device, stage_model.loss_options(args))


if __name__ == "__main__":
    main()
