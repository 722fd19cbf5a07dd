"""Training and evaluation shared by the stages: arguments, split loading, the training loop,
batched prediction, LLP evaluation, checkpoints and resume.

Features of a split are loaded once into one tensor per modality, kept on the training device,
and batches are gathered there by index: no per-sample file reads, no DataLoader workers.
"""
import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
import weakref

import numpy as np
import torch
from tqdm import tqdm

from . import evaluate as llp_eval
from . import features, llp
from .model import mmil_loss
from .optim import make_adam
from .utils import (AVVPError, BackgroundSaver, HostSnapshot, atomic_torch_save, atomic_write_text, clock, ensure_writable_dir,
                    resolve_device, seed_everything)

ARCH_KEYS = ("num_classes", "d_model", "frame_pool")


# ----------------------------------------------------------------------------- arguments

def add_common_args(p, epochs=12, checkpoint="MMIL_Net.pt"):
    """Flags every stage shares; paths default to the project's data/ and feats/ folders."""
    g = p.add_argument_group("data")
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
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16, help="batch size")
    g.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    g.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    g.add_argument("--lr_step", type=int, default=10, help="StepLR step size in epochs")
    g.add_argument("--lr_gamma", type=float, default=0.1, help="StepLR decay")
    g.add_argument("--seed", type=int, default=1, help="seeds python, numpy and torch")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--model_save_dir", default="models/", help="where checkpoints and metrics go")
    g.add_argument("--checkpoint", default=checkpoint, help="checkpoint file name in --model_save_dir")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint's last completed epoch")
    g.add_argument("--eval_batch_size", type=int, default=256, help="batch size for inference (speed only)")
    g.add_argument("--feature_cache", choices=["auto", "on", "off"], default="auto",
                   help="packed per-split feature cache next to the .npy files (auto: every split when the feature "
                        "folders hold >= 2000 videos, as LLP's 11,849 do; none for the demo's 1,400)")
    g.add_argument("--frame_pool", choices=["early", "late"], default="early",
                   help="average res152 frames per segment before fc_v (early, same function, 8x less work) "
                        "or after it (late, the released order)")
    g.add_argument("--graph", choices=["auto", "on", "off"], default="auto",
                   help="capture the whole training step (forward, backward, Adam) in one CUDA graph, and "
                        "the eval forward of val and of stage 2's swap passes in another; auto = on when "
                        "features are on a CUDA device. Same arithmetic as eager, fewer launches")
    g.add_argument("--no-graph", dest="graph", action="store_const", const="off", default=argparse.SUPPRESS,
                   help="same as --graph off")
    g.add_argument("--fused_adam", nargs="?", const="on", choices=["auto", "on", "off"], default="auto",
                   help="Adam's fused kernel (one launch per step instead of one per foreach op): same update "
                        "rule, other float rounding. auto = where the training step is replayed from a CUDA "
                        "graph (on a GPU; the captured step changes Adam's rounding anyway), torch's default "
                        "update elsewhere (CPU runs unchanged); --fused_adam alone = on (fused on CPU needs "
                        "torch >= 2.4); off = torch's default update everywhere (the graph path's foreach "
                        "update up to the sixth session)")
    g.add_argument("--no-fused_adam", dest="fused_adam", action="store_const", const="off", default=argparse.SUPPRESS,
                   help="same as --fused_adam off")
    g.add_argument("--stack_modalities", action=argparse.BooleanOptionalAction, default=False,
                   help="run the shared HAN layer once on the stacked audio and visual sequences (2B) instead of "
                        "twice (B): same function, fewer launches; dropout masks drawn in another order")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default, one per core). On a machine shared with "
                        "other busy processes, 1 avoids thread contention")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    g = p.add_argument_group("method")
    g.add_argument("--contrastive_weight", type=float, default=1.0,
                   help="weight of MA's audio-visual contrastive term (0 gives the HAN baseline)")
    g.add_argument("--temperature", type=float, default=0.2, help="contrastive temperature")
    g.add_argument("--contrastive_smoothing", type=float, default=0.1,
                   help="label smoothing of the contrastive target, spread over the 9 negatives")
    g.add_argument("--contrastive_form", choices=["released", "ce"], default="released",
                   help="released: -log(sum_j t_j p_j) as in the released LabelSmoothingNCELoss; "
                        "ce: label-smoothed cross-entropy -sum_j t_j log p_j")
    g.add_argument("--visual_smoothing", type=float, default=0.1,
                   help="visual target = (1 - s) * y + s / 2 (released: 0.1, i.e. 0.9 y + 0.05)")
    return p


def path_args(data_dir, feats_dir, **override):
    """The data flags of a stage for another folder than ../data and ../feats: LLP's label files in
    `data_dir`, one folder per modality (vggish/, res152/, r2plus1d_18/) in `feats_dir`, the layout
    avvp.synth writes. override: flag name -> path (e.g. label_test=...). Returns argv strings:
    ['--audio_dir', ..., '--eval_visual', ...]."""
    flags = {f"{key}_dir": path for key, path in features.modality_dirs(feats_dir).items()}
    flags.update({f"label_{split}": os.path.join(data_dir, name) for split, name in llp.WEAK_FILES.items()})
    flags.update({f"eval_{kind}": os.path.join(data_dir, name) for kind, name in llp.EVAL_FILES.items()})
    flags.update(override)
    return [arg for flag, path in flags.items() for arg in (f"--{flag}", os.fspath(path))]


def parse_args(parser, argv=None):
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.epochs < 0 or args.eval_batch_size < 1:
        parser.error("--batch-size and --eval_batch_size must be >= 1, --epochs >= 0")
    return args


def setup(args):
    """Seed everything, pick the device (and start CUDA, timed), print one line saying so."""
    clock.reset()
    device = resolve_device(args.device)
    seed_everything(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        with clock("cuda init"):  # context creation, otherwise hidden in the first .to(device)
            torch.zeros(1, device=device)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)") + f", seed {args.seed}")
    return device


# ----------------------------------------------------------------------------- data

class Split:
    """One split on the device: filenames, weak labels (N, C), features, optional dense truth."""

    def __init__(self, filenames, labels, feats, device, gt_a=None, gt_v=None, path=None):
        self.filenames = filenames
        self.labels = labels            # (N, 25) float32 numpy
        self.feats = feats              # dict audio/video/st -> (N, ...) tensor, on `device` or on the host
        self.device = device            # where the model runs
        self.resident = feats["audio"].device.type == device.type  # False: batches are gathered on the host and copied
        self.gt_a, self.gt_v = gt_a, gt_v  # (N, 25, 10) uint8 or None
        self.path = path

    def __len__(self):
        return len(self.filenames)

    def inputs(self, idx, v_idx=None):
        """Batch tensors on the model's device: audio of videos `idx`, visual of `v_idx` (default `idx`)."""
        v_idx = idx if v_idx is None else v_idx
        f = self.feats
        if self.resident:
            return f["audio"][idx], f["video"][v_idx], f["st"][v_idx]
        idx, v_idx = idx.cpu(), v_idx.cpu()
        return tuple(t.to(self.device, non_blocking=True)
                     for t in (f["audio"][idx], f["video"][v_idx], f["st"][v_idx]))


# what a stage says when a label file is missing: the usual first-run mistake is having no data yet
DATA_HINT = "see data/README.md for LLP's files, or run `python -m avvp.synth` for the synthetic set"


def feature_dirs(args):
    return {"audio": args.audio_dir, "video": args.video_dir, "st": args.st_dir}


def load_split(args, label_csv, device, truth=None, name="split", filenames=None):
    """Read a label file and its features (validated) into a Split on `device`.

    truth: None, or the (audio, visual) event tables of read_eval_truth, for the split's dense truth.
    filenames: load these videos instead, with no labels (Split.labels None); label_csv then only
    names the split in messages.
    """
    if filenames is None:
        weak = llp.read_weak(label_csv, missing_hint=DATA_HINT)
        filenames, labels = weak.filenames, weak.labels
    else:
        filenames, labels = list(filenames), None
    dirs = feature_dirs(args)
    for key, folder in dirs.items():
        if not os.path.isdir(folder):
            raise AVVPError(f"{folder}: feature folder not found ({features.MODALITIES[key][0]} features; "
                            f"see feats/README.md, or run `python -m avvp.synth` for the synthetic set)")
    stats = features.stat_files(dirs, filenames)  # one stat per file: missing check and cache key
    missing = features.missing_videos(dirs, filenames, stats)
    if missing:
        if not args.skip_missing:
            first = missing[0]
            where = next(features.feature_path(d, first) for d in dirs.values()
                         if not os.path.isfile(features.feature_path(d, first)))
            raise AVVPError(f"{where}: feature file missing for video {first} of {label_csv} "
                            f"({len(missing)} of {len(filenames)} videos lack features; --skip_missing drops them)")
        missing_set = set(missing)
        keep = np.asarray([f not in missing_set for f in filenames])
        print(f"warning: {name}: skipping {len(missing)} of {len(filenames)} videos with missing feature files",
              file=sys.stderr)
        filenames = [f for f, k in zip(filenames, keep) if k]
        stats = {key: [st for st, k in zip(col, keep) if k] for key, col in stats.items()}
        labels = None if labels is None else labels[keep]
        if not filenames:
            raise AVVPError(f"{label_csv}: no video left after skipping missing feature files")
    cache = use_cache(args, dirs, len(filenames))
    with clock("load"):
        arrays = features.load_split(dirs, filenames, desc=name, progress=not args.no_progress,
                                     pool_frames=args.frame_pool == "early", cache=cache, stats=stats)
        feats = place(arrays, device, name)
        del arrays
        gt_a = gt_v = None
        if truth is not None:
            gt_a, gt_v = (llp.dense_matrix(events, filenames) for events in truth)
    return Split(filenames, labels, feats, device, gt_a, gt_v, path=label_csv)


CACHE_MIN_VIDEOS = 2000     # packed caches pay off for LLP-sized data, not for small demos


def use_cache(args, dirs, n_videos):
    """--feature_cache: on, off, or auto = every split of an LLP-sized dataset, val and test too
    (a feature folder of at least CACHE_MIN_VIDEOS videos: 11,849 for LLP), while a small one (the
    demo's 1,400 videos) is read per file and takes no extra disk. At LLP scale on the 2-core CPU,
    val and test from their caches cut stage 1's load phase from 1.0-1.4 s to 0.17-0.26 s."""
    if args.feature_cache != "auto":
        return args.feature_cache == "on"
    return n_videos >= CACHE_MIN_VIDEOS or features.count_videos(dirs["audio"], CACHE_MIN_VIDEOS) >= CACHE_MIN_VIDEOS


GPU_RESIDENT_FRACTION = 0.5  # keep a split on the GPU when it takes at most this share of free memory


def place(arrays, device, name):
    """numpy arrays -> tensors for `device`: resident on the GPU when they fit, else kept on the
    host and streamed batch by batch (said on stdout). One copy per process either way."""
    nbytes = sum(a.nbytes for a in arrays.values())
    with warnings.catch_warnings():  # memory-mapped caches are read-only; tensors are never written
        warnings.simplefilter("ignore", UserWarning)
        host = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if device.type != "cuda":
        return host
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= GPU_RESIDENT_FRACTION * free:
        return {k: v.to(device) for k, v in host.items()}
    print(f"{name}: features ({nbytes / 2**30:.1f} GiB) do not fit on {device} "
          f"({free / 2**30:.1f} GiB free): streaming batches from host memory")
    return host


# ----------------------------------------------------------------------------- model, optimizer

def net_options(args, **override):
    """MMIL_Net's keyword arguments from the flags (one place, for every stage that builds it)."""
    return {"frame_pool": args.frame_pool, "stack_modalities": args.stack_modalities, **override}


def arch_of(args):
    return {"num_classes": llp.NUM_CLASSES, "d_model": 512, "frame_pool": args.frame_pool}


def uses_fused_adam(args, capturable):
    """--fused_adam: on; off; auto (the default) = exactly where the step is captured in a CUDA
    graph. There Adam must keep its step count and lr on the device (capturable), which already
    computes the bias correction in float32 tensor ops, not Python floats: the captured foreach
    update is another rounding of the released update, and so is the fused kernel, in one launch
    instead of one per foreach op (H200, fourth session: 1.37 -> 1.24 s per epoch). On the CPU
    and on eager CUDA steps, auto leaves torch's default update (per tensor on the CPU: CPU runs
    stay bit for bit as before). True / False (from code, not the command line) mean on / off."""
    choice = {True: "on", False: "off"}.get(args.fused_adam, args.fused_adam)
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"fused_adam must be auto, on or off, got {args.fused_adam!r}")
    return choice == "on" or (choice == "auto" and capturable)


def build_optimizer(args, model, capturable=False):
    """Adam + StepLR. capturable: Adam keeps its step count and lr on the device (a CUDA graph
    replays them), same update rule. Adam is avvp.optim's: torch's update, bit for bit, without
    torch.optim's 1-3 s import of torch._dynamo."""
    fused = True if uses_fused_adam(args, capturable) else None
    if capturable:
        dev = next(model.parameters()).device
        opt = make_adam(model.parameters(), torch.tensor(args.lr, device=dev), capturable=True, fused=fused)
    else:
        opt = make_adam(model.parameters(), args.lr, fused=fused)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=args.lr_gamma)
    return opt, sched


# ----------------------------------------------------------------------------- training

def warm_up_for_capture(fn, steps):
    """Run fn() `steps` times on a side stream, as CUDA graph capture needs first (its first runs
    start cuBLAS and load the kernels), and wait until they are done. Shared by the training
    step's graph and EvalGraph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(steps):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()  # torch.cuda.graph() would wait here anyway; this lets callers time the warm-up


class Trainer:
    """Trains one model on fixed per-video targets (video, audio, visual), (N, C) each."""

    def __init__(self, args, model, split, targets, device):
        self.args, self.model, self.split, self.device = args, model, split, device
        self.t_video, self.t_audio, self.t_visual = (torch.as_tensor(t, dtype=torch.float32, device=device)
                                                     for t in targets)
        self.use_graph = device.type == "cuda" and args.graph != "off" and split.resident
        if args.graph == "on" and device.type != "cuda":
            print("note: --graph on needs CUDA; training eagerly on", device)
        self.opt, self.sched = build_optimizer(args, model, capturable=self.use_graph)
        self.graph = None
        self.capture_seconds = None  # set by the epoch that captures the graph
        path = ("features on the GPU, step in one CUDA graph" if self.use_graph else
                "features on the GPU, eager steps" if device.type == "cuda" and split.resident
                else "batches streamed from host memory, eager steps" if device.type == "cuda"
                else f"CPU, eager steps, {torch.get_num_threads()} threads")
        # which of torch's Adam updates runs (avvp.optim picks it by torch's rule: foreach on CUDA)
        self.adam_update = ("fused" if self.opt.defaults.get("fused") else "foreach" if device.type == "cuda"
                            else "per tensor")
        print(f"training path: {path}; Adam update: {self.adam_update}")
        # batch order comes from its own generator so that resume can restore it exactly
        self.gen = torch.Generator().manual_seed(args.seed)

    # -- one training step, eager
    def step(self, idx):
        loss = self.loss(idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    # -- the same step captured in one CUDA graph (full batches only)
    def capture(self):
        """Record forward + backward + Adam for a batch of args.batch_size videos.

        Warm-up steps (needed before capture) would change the weights and Adam's moments; both
        are snapshotted first and written back in place afterwards, so capturing leaves the
        training trajectory as if it never ran.
        """
        bs, n = self.args.batch_size, len(self.split)
        self.static_idx = torch.arange(bs, device=self.device) % n
        params = list(self.model.parameters())
        saved_p = [p.detach().clone() for p in params]
        saved_s = {p: {k: v.clone() for k, v in self.opt.state[p].items() if torch.is_tensor(v)}
                   for p in params if p in self.opt.state}
        t0 = time.perf_counter()
        warm_up_for_capture(lambda: self.step(self.static_idx), steps=3)
        t1 = time.perf_counter()
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self.step(self.static_idx)
        with torch.no_grad():
            for p, v in zip(params, saved_p):
                p.copy_(v)
            for p in params:
                for k, v in self.opt.state.get(p, {}).items():
                    if torch.is_tensor(v):
                        v.copy_(saved_s[p][k]) if p in saved_s else v.zero_()
        # (warm-up, capture) seconds: the warm-up's first CUDA steps load every kernel and start cuBLAS
        self.capture_seconds = (t1 - t0, time.perf_counter() - t1)

    def loss(self, idx):
        out = self.model(*self.split.inputs(idx))
        a = self.args
        loss, _ = mmil_loss(out, self.t_video[idx], self.t_audio[idx], self.t_visual[idx],
                            a.contrastive_weight, a.temperature, a.contrastive_smoothing, a.contrastive_form)
        return loss

    def train_epoch(self, epoch):
        self.model.train()
        n, bs = len(self.split), self.args.batch_size
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        nb = math.ceil(n / bs)
        losses = torch.zeros(nb, device=self.device)
        if self.use_graph and self.graph is None and n >= bs:
            self.capture()
        bar = tqdm(range(nb), desc=f"epoch {epoch}", leave=False, disable=self.args.no_progress, mininterval=1.0)
        for b in bar:
            idx = perm[b * bs:(b + 1) * bs]
            if self.graph is not None and len(idx) == bs:
                self.static_idx.copy_(idx)
                self.graph.replay()
                losses[b] = self.static_loss
            else:  # eager: CPU, --no-graph, or the last partial batch
                losses[b] = self.step(idx)
            if self.device.type == "cpu" and not math.isfinite(losses[b].item()):
                break
        self.sched_step()
        losses = losses.cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise AVVPError(f"non-finite loss ({losses[bad[0]]}) at epoch {epoch}, batch {bad[0] + 1} of {nb}; "
                            f"training stopped, last good checkpoint left intact")
        return float(losses.mean())

    def sched_step(self):
        """StepLR; with a device lr (graph) the new value is written into the same tensor."""
        lr_t = self.opt.param_groups[0]["lr"]
        self.sched.step()
        if torch.is_tensor(lr_t):
            new = self.opt.param_groups[0]["lr"]
            lr_t.fill_(float(new))
            self.opt.param_groups[0]["lr"] = lr_t

    def lr(self):
        return float(self.opt.param_groups[0]["lr"])

    # -- checkpoint state
    def state(self):
        opt = self.opt.state_dict()
        for g in opt["param_groups"]:  # store lr as a number: loadable by eager and graph runs alike
            g["lr"] = float(g["lr"])
        sched = self.sched.state_dict()
        sched["_last_lr"] = [float(x) for x in sched.get("_last_lr", [])]
        return {"model": self.model.state_dict(), "optimizer": opt,
                "scheduler": sched, "rng": rng_state(self.gen)}

    def load_state(self, ckpt):
        lr_t = self.opt.param_groups[0]["lr"]
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if torch.is_tensor(lr_t):  # keep the device lr the graph will read
            lr_t.fill_(float(self.opt.param_groups[0]["lr"]))
            for g in self.opt.param_groups:
                g["lr"] = lr_t
        set_rng_state(ckpt["rng"], self.gen)


def rng_state(gen):
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
         "batch_order": gen.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s, gen):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    gen.set_state(s["batch_order"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------- inference, evaluation

PREDICT_KEYS = ("video_prob", "audio_prob", "visual_prob", "frame_prob")


class EvalGraph:
    """predict()'s eval-mode forward for full batches of one split, recorded once in a CUDA graph
    and replayed for every later batch (a pure speed-up, used where a split is predicted many
    times: val after every epoch, stage 2's three swap passes).

    The graph reads the batch's audio and visual video indices from two device buffers, gathers
    the features and runs the forward, leaving the outputs in fixed device tensors. It replays
    the recorded kernel launches: the same kernels on the same shapes as the eager forward, with
    the model's current weights (training updates them in place), at the cost of one launch
    instead of one Python dispatch per kernel. Its outputs are compared, bit for bit, with an
    eager forward of the same batch once it is recorded; a difference, or a failed capture, is a
    one-line note and predict() runs eagerly.
    """

    def __init__(self, model, split, batch_size, keys, name):
        dev = split.feats["audio"].device
        self.split, self.keys = split, keys   # the graph reads the split's feature tensors: keep them alive
        self.a_idx = torch.arange(batch_size, device=dev) % len(split)  # (B,) static inputs of the graph
        self.v_idx = self.a_idx.flip(0).contiguous()                      # unlike a_idx: the check sees swaps
        forward = lambda: model(*split.inputs(self.a_idx, self.v_idx))   # noqa: E731
        self.ok = False
        try:
            out = self._record(forward)
            self.out = {k: getattr(out, k) for k in keys}
            self._replay()
            ref = forward()
            self.ok = all(torch.equal(self.out[k], getattr(ref, k)) for k in keys)
            why = "its outputs differ from the eager forward's"
        except Exception as e:  # noqa: BLE001 -- whatever stops the capture, eager still works
            why = f"capture failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"
        if not self.ok:
            print(f"note: {name}: the eval forward is not replayed from a CUDA graph, {why}; predicting eagerly")

    def _record(self, forward):
        """Capture forward() in a CUDA graph (after a warm-up run on a side stream); its outputs."""
        warm_up_for_capture(forward, steps=1)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return forward()

    def _replay(self):
        self.graph.replay()

    def __call__(self, a_idx, v_idx):
        """The outputs for videos a_idx (audio) / v_idx (visual), (B,) each: {key: static tensor}."""
        self.a_idx.copy_(a_idx)
        self.v_idx.copy_(v_idx)
        self._replay()
        return self.out


_EVAL_GRAPHS = weakref.WeakKeyDictionary()  # model -> {(id(split), batch size, keys): EvalGraph}


def _eval_graph(model, split, batch_size, keys, name):
    """The model's EvalGraph for (split, batch size, outputs), recorded on first use and kept while
    the model lives (beside it, not in it: a deep copy of the model never meets a CUDA graph)."""
    graphs = _EVAL_GRAPHS.setdefault(model, {})
    key = (id(split), batch_size, keys)
    if key not in graphs or graphs[key].split is not split:
        graphs[key] = EvalGraph(model, split, batch_size, keys, name)
    return graphs[key]


def use_eval_graph(args, split):
    """Replay predict()'s forward from a CUDA graph: on CUDA, features resident, --graph not off."""
    return split.device.type == "cuda" and split.resident and args.graph != "off"


@torch.no_grad()
def predict(model, split, batch_size=256, swap=None, keys=PREDICT_KEYS, graph=False, name="split"):
    """Run the model in eval mode over a split in large batches.

    swap: None, or (partner (N,) long, 'audio' | 'visual'): replace that modality of video i by
    partner[i]'s. keys: the outputs wanted, of video_prob, audio_prob, visual_prob (N, C) and
    frame_prob (N, 10, 2, C). Returns a numpy dict of them. Outputs stay on the model's device
    until the end (one copy to the host per output, not one per batch). graph: replay full
    batches from the split's EvalGraph (see use_eval_graph); the last, partial one runs eagerly.
    """
    was_training = model.training
    model.eval()
    n = len(split)
    keys = tuple(keys)
    outs = {k: [] for k in keys}
    dev = split.feats["audio"].device
    eg = _eval_graph(model, split, batch_size, keys, name) if graph and n >= batch_size else None
    if eg is not None and not eg.ok:
        eg = None
    if swap is not None:
        partner = torch.as_tensor(swap[0], device=dev)
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(s + batch_size, n), device=dev)
        a_idx = v_idx = idx
        if swap is not None:
            j = partner[idx]
            a_idx, v_idx = (j, idx) if swap[1] == "audio" else (idx, j)
        if eg is not None and len(idx) == batch_size:
            out = eg(a_idx, v_idx)
            for k in keys:  # the graph's output tensors are overwritten by the next replay
                outs[k].append(out[k].clone())
            continue
        out = model(*split.inputs(a_idx, v_idx))
        for k in keys:
            outs[k].append(getattr(out, k).float())
    model.train(was_training)
    return {k: torch.cat(v).cpu().numpy() for k, v in outs.items()}


def evaluate(model, split, batch_size=256, probs=None, graph=False, name="split"):
    """LLP metrics (percent, keys of avvp.evaluate) of the model on a split with dense truth."""
    if split.gt_a is None:
        raise AVVPError(f"{split.path}: no dense truth loaded for evaluation")
    p = probs if probs is not None else predict(model, split, batch_size, graph=graph, name=name)
    pred_a, pred_v = llp_eval.predict_segments(p["frame_prob"], p["audio_prob"], p["visual_prob"])
    return llp_eval.llp_scores(pred_a, pred_v, split.gt_a, split.gt_v)


def metrics_line(m):
    return ("seg A {seg_a:.2f} V {seg_v:.2f} AV {seg_av:.2f} Type {seg_type:.2f} Event {seg_event:.2f} | "
            "evt A {evt_a:.2f} V {evt_v:.2f} AV {evt_av:.2f} Type {evt_type:.2f} Event {evt_event:.2f}").format(**m)


def write_metrics(path, metrics, extra=None):
    obj = dict(metrics)
    if extra:
        obj.update(extra)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_path(args):
    return os.path.join(args.model_save_dir, args.checkpoint)


def save_checkpoint(path, trainer, args, epoch, metrics, stage, extra=None, saver=None):
    """Write the trainer's state atomically; with a BackgroundSaver, on its thread (same bytes).
    Either way GPU tensors reach the host through one HostSnapshot copy and are written as host
    tensors, so a checkpoint loads on a machine without CUDA whichever path wrote it."""
    ckpt = {"stage": stage, "epoch": epoch, "args": vars(args), "arch": arch_of(args), "metrics": metrics}
    ckpt.update(trainer.state())
    if extra:
        ckpt.update(extra)
    if saver is None:
        atomic_torch_save(HostSnapshot(ckpt, copy_host=False).resolve(), path)
    else:
        saver.save(ckpt, path)


def load_checkpoint(path, hint=None):
    if not os.path.isfile(path):
        where = path if os.path.isabs(path) else f"{path} (= {os.path.abspath(path)})"
        msg = f"{where}: checkpoint not found"
        raise AVVPError(msg + (f"; {hint}" if hint else ""))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise AVVPError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise AVVPError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    return ckpt


def load_model_strict(model, ckpt, path):
    """Load weights strictly; an architecture mismatch is a one-line error naming the checkpoint."""
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError) as e:  # TypeError: 'model' is not a state dict at all
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise AVVPError(f"{path}: architecture does not match this model ({detail[:300]})") from None


def fit(args, trainer, val, test, stage, device, extra=None):
    """Train for args.epochs (resuming if asked), evaluating val each epoch; keep the last epoch.

    Writes the checkpoint atomically after every epoch but the last (so --resume and kill -9 are
    safe), then val_metrics.json; finally evaluates test, writes test_metrics.json and the last
    epoch's checkpoint with val and test metrics (one write of it instead of two). Checkpoints are
    written on a background thread while the next epoch trains (a pure speed-up: the state is
    snapshotted first, writes stay in order, and all are on disk when fit returns).
    """
    saver = BackgroundSaver()
    try:
        return _fit(args, trainer, val, test, stage, device, extra, saver)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            saver.wait()
        raise


def _fit(args, trainer, val, test, stage, device, extra, saver):
    path = checkpoint_path(args)
    ensure_writable_dir(args.model_save_dir, "--model_save_dir")  # fail now, not after the first epoch
    start = 1
    if args.resume and os.path.isfile(path):
        ckpt = load_checkpoint(path)
        if ckpt.get("stage") != stage:
            raise AVVPError(f"{path}: checkpoint is from {ckpt.get('stage')}, cannot resume {stage}")
        load_model_strict(trainer.model, ckpt, path)
        try:
            trainer.load_state(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise AVVPError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: {e})") from None
        start = ckpt["epoch"] + 1
        print(f"resuming {path} after epoch {ckpt['epoch']}")
    elif args.resume:
        print(f"--resume: no checkpoint at {path}, starting from scratch")
    metrics = None
    last = start - 1  # the epoch the trainer's state belongs to
    for epoch in range(start, args.epochs + 1):
        captured = trainer.graph is not None
        with clock("train"):
            loss = trainer.train_epoch(epoch)
        train_s = clock.last
        with clock("val"):
            # val is predicted after every epoch: full batches replayed from a CUDA graph where one is used
            metrics = evaluate(trainer.model, val, args.eval_batch_size, graph=use_eval_graph(args, val), name="val")
        # the epoch that captured the CUDA graph says what that cost (within its train time)
        cap = ""
        if not captured and trainer.graph is not None:
            cap = " (graph warm-up {:.2f}s, capture {:.2f}s)".format(*trainer.capture_seconds)
        print(f"epoch {epoch:3d}/{args.epochs} loss {loss:.4f} lr {trainer.lr():.2e} "
              f"train {train_s:.2f}s{cap} val {clock.last:.2f}s | val {metrics_line(metrics)}", flush=True)
        last = epoch
        if epoch < args.epochs:  # the last epoch's state is written once, below, with its test metrics
            with clock("save"):
                save_checkpoint(path, trainer, args, epoch, {"val": metrics}, stage, extra, saver)
    if metrics is not None:
        write_metrics(os.path.join(args.model_save_dir, "val_metrics.json"), metrics, {"epoch": args.epochs})
    with clock("test"):
        test_metrics = evaluate(trainer.model, test, args.eval_batch_size)
    print(llp_eval.format_table(test_metrics, title=f"{stage}: test set ({len(test)} videos), last epoch"))
    write_metrics(os.path.join(args.model_save_dir, "test_metrics.json"), test_metrics, {"epoch": args.epochs})
    with clock("save"):
        saver.wait()  # earlier epochs' checkpoints are on disk (or their error raised) before this one
        # the last epoch's state with its val and test metrics, written here and now (nothing is left
        # to overlap with), once: a kill before this line leaves the previous epoch's checkpoint,
        # from which --resume redoes the last epoch. After --epochs 0, the initial weights as epoch
        # 0 (an untrained reference the next stage can load)
        save_checkpoint(path, trainer, args, last, {"val": metrics, "test": test_metrics}, stage, extra)
    print(memory_line(device))
    print(clock.line())
    return test_metrics


def memory_line(device):
    """Peak resident memory of this process, and peak GPU memory when on CUDA."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    line = f"peak memory: RSS {rss:.2f} GiB"
    if device.type == "cuda":
        line += f", GPU {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return line


def load_stage_checkpoint(args, model, hint):
    """Load the stage's checkpoint (--model_save_dir/--checkpoint) strictly into `model`; returns it."""
    path = checkpoint_path(args)
    ckpt = load_checkpoint(path, hint)
    load_model_strict(model, ckpt, path)
    return ckpt


def eval_only(args, stage, model, device, split_csv, split_name, hint):
    """--mode val|test: load the stage's checkpoint strictly into `model` and print the LLP table."""
    path = checkpoint_path(args)
    ckpt = load_stage_checkpoint(args, model, hint)
    split = load_split(args, split_csv, device, truth=read_eval_truth(args), name=split_name)
    m = evaluate(model, split, args.eval_batch_size)
    print(llp_eval.format_table(m, title=f"{stage}: {split_name} set ({len(split)} videos), {path}"))
    write_metrics(os.path.join(args.model_save_dir, f"{split_name}_metrics.json"), m,
                  {"epoch": ckpt.get("epoch")})
    return m


def stage_parser(description, train_mode):
    """Parser of a training stage: --mode TRAIN_MODE|val|test|parse, the shared flags, parse flags."""
    from . import parse
    p = argparser(description)
    p.add_argument("--mode", choices=[train_mode, "val", "test", "parse"], default=train_mode,
                   help="what to do (val/test: evaluate the checkpoint; parse: write predicted event tables)")
    add_common_args(p, epochs=12)
    parse.add_parse_args(p)
    return p


def default_args(train_mode="train", **override):
    """A training stage's flags at their defaults (the released recipe), with `override` (flag ->
    value): for code that builds a Trainer without a command line (tests, benchmarks)."""
    args = parse_args(stage_parser(None, train_mode), [])
    vars(args).update(override)
    return args


def start_stage(args, stage, net_class, train_mode):
    """The start shared by the training stages (1 and 3): device, seeds and the network; then
    --mode val | test | parse runs here and None is returned, or (device, net) for training."""
    device = setup(args)
    net = net_class(**net_options(args)).to(device)
    if run_eval_mode(args, stage, net, device, train_mode):
        return None
    return device, net


def run_eval_mode(args, stage, model, device, train_mode):
    """--mode val | test | parse, shared by the training stages. Returns False for a training mode."""
    hint = f"train it first: python main_avvp.py --mode {train_mode}"
    if args.mode == "parse":
        from . import parse  # parse builds on this module
        parse.run(args, stage, model, device, hint=hint)
    elif args.mode in ("val", "test"):
        csv = args.label_val if args.mode == "val" else args.label_test
        eval_only(args, stage, model, device, csv, args.mode, hint=hint)
    else:
        return False
    return True


def load_eval_splits(args, device):
    """val and test splits with their dense truth."""
    truth = read_eval_truth(args)
    return (load_split(args, args.label_val, device, truth=truth, name="val"),
            load_split(args, args.label_test, device, truth=truth, name="test"))


def read_eval_truth(args):
    """The dense audio and visual eval files as event tables, each read (and warned about) once."""
    with clock("load"):
        return (llp.read_dense(args.eval_audio, missing_hint=DATA_HINT),
                llp.read_dense(args.eval_visual, missing_hint=DATA_HINT))


def weak_targets(labels, visual_smoothing):
    """Stage-1 targets from weak labels y (N, C): video y, audio y, visual (1 - s) y + s / 2."""
    y = np.asarray(labels, dtype=np.float32)
    return y, y.copy(), (1.0 - visual_smoothing) * y + visual_smoothing / 2.0


def argparser(description):
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
