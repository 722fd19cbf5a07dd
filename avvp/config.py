"""Command-line flags the stages share (paths, device, seed, training loop, speed), their checks,
and a run's setup (seeds, device). Each stage's method knobs live in its own main_avvp.py. The
argparse namespace stops here: the rest of the package takes plain values."""
import argparse
import math
import os
import random
import sys
from collections import namedtuple

import numpy as np
import torch

from . import features, llp
from .data import FeatureSource
from .errors import AVVPError
from .files import ensure_writable_dir
from .timing import clock

LR_STEP, LR_GAMMA = 10, 0.1  # the released schedule: StepLR(step_size=10, gamma=0.1) over 12 epochs
# what the training loop reads (engine.py): built from a stage's flags by training_settings()
TrainSettings = namedtuple("TrainSettings", "batch_size epochs lr seed resume graph fused_adam eval_batch_size "
                                            "progress model_save_dir checkpoint run_args")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in --help and a bad flag reported in one line (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def number(lo=None, hi=None, lo_open=False, hi_open=False, kind=float):
    """An argparse type: a finite number (int or float) within [lo, hi] (open ends where asked)."""
    def parse(text):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        bad = not math.isfinite(x) or (lo is not None and (x <= lo if lo_open else x < lo)) or \
            (hi is not None and (x >= hi if hi_open else x > hi))
        if bad:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {' and '.join(filter(None, (left, right)))}")
        return x
    parse.__name__ = "int" if kind is int else "float"  # what argparse names in its messages
    return parse


def threads_arg(text):
    """argparse type of --threads: 0 (torch's default) up to this machine's CPU threads (more only
    slows every step down: 2,000 threads made a 0.5 s epoch take 73 s)."""
    n = number(0, kind=int)(text)
    if n > (os.cpu_count() or 1):
        raise argparse.ArgumentTypeError(f"{n} is more than this machine's {os.cpu_count()} CPU threads")
    return n


threads_arg.__name__ = "int"
# numpy's seeds are 0 .. 2**32 - 1; python's and torch's take more, so numpy's range bounds the one --seed
SEED = number(0, 2**32 - 1, kind=int)


# Hidden from --help's list, named in its epilog: switches that change speed, not results
# (docs/PERFORMANCE.md); benchmarks set them
SPEED_NOTE = "speed switches, same results (not listed above; docs/PERFORMANCE.md): "


def add_common_args(p, epochs=12, checkpoint="MMIL_Net.pt", training=True):
    """Flags every stage shares, in one group; paths default to the project's data/ and feats/
    folders. training=False leaves out the training loop's flags (stage 2 trains nothing)."""
    g = p.add_argument_group("shared by the stages (paths, run, training loop)")
    g.add_argument("--audio_dir", default="../feats/vggish/", help="vggish features, (10, 128) per video")
    g.add_argument("--video_dir", default="../feats/res152/", help="res152 features, (80, 2048) per video")
    g.add_argument("--st_dir", default="../feats/r2plus1d_18/", help="r2plus1d_18 features, (10, 512) per video")
    g.add_argument("--label_train", default="../data/AVVP_train.csv", help="weak train labels")
    g.add_argument("--label_val", default="../data/AVVP_val_pd.csv", help="weak val labels")
    g.add_argument("--label_test", default="../data/AVVP_test_pd.csv", help="weak test labels")
    g.add_argument("--eval_audio", default="../data/AVVP_eval_audio.csv", help="dense audio truth (val+test)")
    g.add_argument("--eval_visual", default="../data/AVVP_eval_visual.csv", help="dense visual truth (val+test)")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop videos whose feature files are missing (reporting how many) instead of failing")
    g.add_argument("--seed", type=SEED, default=1, help="seeds python, numpy and torch (0 .. 2**32 - 1)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--model_save_dir", default="models/", help="where checkpoints and metrics go")
    g.add_argument("--checkpoint", default=checkpoint, help="checkpoint file name in --model_save_dir")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    if training:
        g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=number(1, kind=int), default=16,
                       help="batch size")
        g.add_argument("--epochs", type=number(0, kind=int), default=epochs,
                       help=f"training epochs (Adam, StepLR({LR_STEP}, {LR_GAMMA}) as released)")
        g.add_argument("--lr", type=number(0, lo_open=True), default=3e-4, help="Adam learning rate")
        g.add_argument("--resume", action="store_true", help="continue from the checkpoint's last completed epoch")
    hide = argparse.SUPPRESS
    p.add_argument("--eval_batch_size", type=number(1, kind=int), default=256, help=hide)
    # auto: a packed copy of each split in <feature folder>/.packed/ when the folders hold >= 5000 videos
    p.add_argument("--feature_cache", choices=["auto", "on", "off"], default="auto", help=hide)
    # early: average the res152 frames of a segment before fc_v (the same function, 8x less work)
    p.add_argument("--frame_pool", choices=["early", "late"], default="early", help=hide)
    p.add_argument("--threads", type=threads_arg, default=0, help=hide)  # 0: torch's default
    if training:
        # the training step in one CUDA graph (auto: when the features sit on a CUDA device)
        p.add_argument("--graph", choices=["auto", "on", "off"], default="auto", help=hide)
        # torch's fused Adam (auto: where the step is replayed from a CUDA graph)
        p.add_argument("--fused_adam", choices=["auto", "on", "off"], default="auto", help=hide)
    hidden = ["--eval_batch_size", "--feature_cache auto|on|off", "--frame_pool early|late", "--threads N"]
    if training:
        hidden += ["--graph auto|on|off", "--fused_adam auto|on|off"]
    p.epilog = SPEED_NOTE + ", ".join(hidden)
    return p


def add_loss_args(g, contrastive_weight=1.0, temperature=0.2, contrastive_smoothing=0.1, visual_smoothing=0.1):
    """A training stage's loss flags. The defaults are the released recipe's, written once here; a
    stage's main_avvp.py passes other values to change its own."""
    g.add_argument("--contrastive_weight", type=number(0), default=contrastive_weight,
                   help="weight of MA's audio-visual contrastive term (0: no contrastive term)")
    g.add_argument("--temperature", type=number(0, lo_open=True), default=temperature, help="contrastive temperature")
    g.add_argument("--contrastive_smoothing", type=number(0, 1, hi_open=True), default=contrastive_smoothing,
                   help="label smoothing of the contrastive target, spread over the 9 other segments")
    g.add_argument("--visual_smoothing", type=number(0, 1), default=visual_smoothing,
                   help="visual target = (1 - s) * y + s / 2, y = the visual labels (0.1: 0.9 y + 0.05)")


def add_recipe_arg(g, robust):
    """--recipe released|robust in a stage's method group; robust: {flag dest: value} (may be empty)."""
    what = ", ".join(f"--{k} {v}" for k, v in robust.items()) or "the released recipe in this stage"
    g.add_argument("--recipe", choices=["released", "robust"], default="released",
                   help=f"released: MA's recipe (the defaults); robust: {what} (docs/RESULTS.md; stage 2's "
                        "reads the val split's dense truth); a flag given explicitly still wins")


def parse_with_recipe(p, argv, robust):
    """Parse argv; under --recipe robust, again with robust's values as the defaults, so that an
    explicit flag overrides the recipe and vars(args) records both the recipe and every option."""
    args = p.parse_args(argv)
    if args.recipe == "robust" and robust:
        p.set_defaults(**robust)
        args = p.parse_args(argv)
    return args


def feature_source(args, pool_frames=None):
    """Where and how a stage reads its features, from its flags (pool_frames: default --frame_pool)."""
    return FeatureSource(dirs={"audio": args.audio_dir, "video": args.video_dir, "st": args.st_dir},
                         skip_missing=args.skip_missing, cache=args.feature_cache, progress=not args.no_progress,
                         pool_frames=args.frame_pool == "early" if pool_frames is None else pool_frames)


def training_settings(args):
    """What the training loop reads, from a training stage's flags."""
    return TrainSettings(batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, seed=args.seed,
                         resume=args.resume, graph=args.graph, fused_adam=args.fused_adam,
                         eval_batch_size=args.eval_batch_size, progress=not args.no_progress,
                         model_save_dir=args.model_save_dir, checkpoint=args.checkpoint, run_args=vars(args))


def path_args(data_dir, feats_dir, **override):
    """The data flags of a stage for LLP's label files in `data_dir` and the three feature folders in
    `feats_dir` (the layout avvp.synth writes). override: flag name -> path. Returns argv strings."""
    flags = {f"{key}_dir": path for key, path in features.modality_dirs(feats_dir).items()}
    flags.update({f"label_{split}": os.path.join(data_dir, name) for split, name in llp.WEAK_FILES.items()})
    flags.update({f"eval_{kind}": os.path.join(data_dir, name) for kind, name in llp.EVAL_FILES.items()})
    flags.update(override)
    return [arg for flag, path in flags.items() for arg in (f"--{flag}", os.fspath(path))]


def check_folds(folds, n_videos, split="train"):
    """--folds K needs at least one video in each of its K folds."""
    if folds > n_videos:
        raise AVVPError(f"--folds {folds}: more folds than the {n_videos} {split} videos (each fold model must hold "
                        f"at least one video out; at most --folds {n_videos})")


def check_output_file(folder, name, flag="--checkpoint", folder_flag="--model_save_dir"):
    """Before any loading: `folder` is writable and `name` (flag's value) names a file in it (not
    empty, not a folder), so a run never works for minutes and then cannot save."""
    path = os.path.join(folder, name)
    if not name or name.endswith(("/", os.sep)) or os.path.isdir(path):
        raise AVVPError(f"{flag} {name!r}: expected a file name in {folder_flag} ({folder})")
    ensure_writable_dir(os.path.dirname(path) or ".", folder_flag)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise AVVPError(f"{path}: {flag} file is not writable")


def seed_everything(seed):
    """One seed for python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name="auto"):
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' (a GPU this machine has),
    'mps' (where available) as given; anything else is a one-line error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise AVVPError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AVVPError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AVVPError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (torch.backends.mps.is_available()):
        raise AVVPError(f"--device {name}: Apple's MPS is not available on this machine (use --device cpu or auto)")
    return dev


def setup(seed, device="auto", threads=0):
    """Seed everything, pick the device (and start CUDA, timed), print one line saying so."""
    clock.reset()
    device = resolve_device(device)
    seed_everything(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        with clock("cuda init"):  # context creation, otherwise hidden in the first .to(device)
            torch.zeros(1, device=device)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)") + f", seed {seed}")
    return device
