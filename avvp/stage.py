"""What the two training stages share at their entry: their parser, and the modes that use a
trained checkpoint instead of training (--mode val | test | parse). Like config.py, this is where
a stage's flags are read; what it calls takes plain values."""
import os

from . import config, parse
from . import evaluate as llp_eval
from .checkpoints import load_into
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


def use_checkpoint(args, stage, net, device, train_mode):
    """--mode val | test: the LLP table of the stage's checkpoint on that split (and its metrics
    file); --mode parse: event tables of the videos asked for (avvp/parse.py)."""
    path = os.path.join(args.model_save_dir, args.checkpoint)
    hint = f"train it first: python main_avvp.py --mode {train_mode}"
    source = config.feature_source(args)
    if args.mode == "parse":
        parse.check_request(args.plot, args.parse_dir, args.parse_label, args.parse_out)  # before the checkpoint is read
    ckpt = load_into(net, path, hint)
    if args.mode == "parse":
        split, sources = parse.load_input(source, args.parse_dir, args.parse_label or args.label_test,
                                          args.eval_audio, args.eval_visual, device)
        return parse.run(net, split, args.parse_out, args.plot, args.eval_batch_size, title=f"{stage}, {path}",
                         extra={"stage": stage, "checkpoint": path, "epoch": ckpt.get("epoch")}, sources=sources)
    label = args.label_val if args.mode == "val" else args.label_test
    split = load_split(source, label, device, truth=read_eval_truth(args.eval_audio, args.eval_visual),
                       name=args.mode)
    m = evaluate(net, split, args.eval_batch_size)
    print(llp_eval.format_table(m, title=f"{stage}: {args.mode} set ({len(split)} videos), {path}"))
    write_metrics(os.path.join(args.model_save_dir, f"{args.mode}_metrics.json"), m, {"epoch": ckpt.get("epoch")})
    return m
