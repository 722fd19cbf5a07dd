"""What the two training stages share around training: their parser, their start, and the
modes that use a trained checkpoint (--mode val | test | parse)."""
import os

from . import config, parse
from . import evaluate as llp_eval
from .checkpoints import checkpoint_path, load_stage_checkpoint
from .data import load_split, read_eval_truth
from .predict import evaluate, write_metrics


def stage_parser(description, train_mode):
    """Parser of a training stage: --mode TRAIN_MODE|val|test|parse, the shared flags, parse flags."""
    p = config.ArgumentParser(description=description)
    p.add_argument("--mode", choices=[train_mode, "val", "test", "parse"], default=train_mode,
                   help="what to do (val/test: evaluate the checkpoint; parse: write predicted event tables)")
    config.add_common_args(p, epochs=12)
    parse.add_parse_args(p)
    return p


def start_stage(args, stage, net_class, train_mode):
    """Device, seeds and the network; then --mode val | test | parse runs here and None is
    returned, or (device, net) for training."""
    device = config.setup(args)
    net = net_class(frame_pool=args.frame_pool, stack_modalities=args.stack_modalities).to(device)
    hint = f"train it first: python main_avvp.py --mode {train_mode}"
    if args.mode == "parse":
        parse.run(args, stage, net, device, hint=hint)
    elif args.mode in ("val", "test"):
        eval_only(args, stage, net, device, args.label_val if args.mode == "val" else args.label_test, args.mode, hint)
    else:
        return device, net
    return None


def eval_only(args, stage, model, device, split_csv, split_name, hint):
    """--mode val|test: load the stage's checkpoint strictly into `model` and print the LLP table."""
    ckpt = load_stage_checkpoint(args, model, hint)
    split = load_split(args, split_csv, device, truth=read_eval_truth(args), name=split_name)
    m = evaluate(model, split, args.eval_batch_size)
    print(llp_eval.format_table(m, title=f"{stage}: {split_name} set ({len(split)} videos), {checkpoint_path(args)}"))
    write_metrics(os.path.join(args.model_save_dir, f"{split_name}_metrics.json"), m, {"epoch": ckpt.get("epoch")})
    return m
