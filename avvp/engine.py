"""The training loop of stages 1 and 3 (the model's loss: avvp/model.py): fit() runs the epochs,
Trainer.train_one_epoch() the batches, eager or with the whole step replayed from one CUDA graph;
val every epoch, test at the end, checkpoints, resume; and the cross-fitting models of --folds.

settings: a config.TrainSettings (batch size, epochs, lr, seed, where to save, ...), built from
the stage's flags."""
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from . import evaluate as llp_eval
from .checkpoints import fold_dir, load_checkpoint, load_model_strict, save_checkpoint
from .config import LR_GAMMA, LR_STEP, seed_everything
from .errors import AVVPError
from .files import ensure_writable_dir
from .model import MMIL_Net, mmil_loss
from .predict import evaluate, metrics_line, write_metrics
from .timing import clock, memory_line

# how an optimizer runs its update, not what it computes: a resumed run keeps its own (see load_state)
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def build_optimizer(model, lr, fused_adam="auto", capturable=False):
    """torch.optim.Adam + StepLR(LR_STEP, LR_GAMMA). capturable: Adam keeps its step count and lr on
    the device, as a CUDA graph that replays the step needs. fused_adam auto uses torch's fused
    kernel exactly there (the captured step already computes the bias correction in float32 tensor
    ops, another rounding of the released update; the fused kernel is one launch instead of one per
    foreach op); elsewhere torch's default update, so CPU runs compute what torch.optim.Adam(lr) does."""
    fused = fused_adam == "on" or (fused_adam == "auto" and capturable)
    lr = torch.tensor(lr, device=next(model.parameters()).device) if capturable else lr
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable, fused=True if fused else None)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=LR_STEP, gamma=LR_GAMMA)
    return opt, sched


class Trainer:
    """Trains one model on per-video targets (video, audio, visual), (N, C) each.

    loss_options: mmil_loss's keyword arguments (contrastive_weight, temperature, smoothing), from
    the stage's own flags. set_targets() replaces the targets between epochs.
    """

    def __init__(self, model, split, targets, device, loss_options, settings):
        self.model, self.split, self.device = model, split, device
        self.batch_size, self.progress = settings.batch_size, settings.progress
        self.loss_options = dict(loss_options)
        self.t_video, self.t_audio, self.t_visual = (torch.as_tensor(t, dtype=torch.float32, device=device)
                                                     for t in targets)
        self.use_graph = device.type == "cuda" and settings.graph != "off" and split.resident
        if settings.graph == "on" and device.type != "cuda":
            print("note: --graph on needs CUDA; training eagerly on", device)
        self.opt, self.sched = build_optimizer(model, settings.lr, settings.fused_adam, capturable=self.use_graph)
        self.graph = None
        self.capture_seconds = None  # (warm-up, capture), set by the epoch that captures the graph
        path = ("features on the GPU, step in one CUDA graph" if self.use_graph else
                "features on the GPU, eager steps" if device.type == "cuda" and split.resident
                else "batches streamed from host memory, eager steps" if device.type == "cuda"
                else f"CPU, eager steps, {torch.get_num_threads()} threads")
        self.adam_update = "fused" if self.opt.defaults.get("fused") else "torch's default"
        print(f"training path: {path}; Adam update: {self.adam_update}")
        # batch order comes from its own generator so that resume can restore it exactly
        self.gen = torch.Generator().manual_seed(settings.seed)

    def set_targets(self, targets):
        """New (video, audio, visual) targets (N, C), written into the same tensors (a captured step reads them)."""
        with torch.no_grad():
            for t, new in zip((self.t_video, self.t_audio, self.t_visual), targets):
                t.copy_(torch.as_tensor(new, dtype=torch.float32))

    def step(self, idx):
        """One batch: forward, the loss against the batch's targets, backward, Adam."""
        out = self.model(*self.split.inputs(idx))
        loss = mmil_loss(out, self.t_video[idx], self.t_audio[idx], self.t_visual[idx], **self.loss_options)[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def capture(self):
        """Record forward + backward + Adam for a batch of args.batch_size videos in one CUDA graph.

        The warm-up steps that capture needs first would change the weights and Adam's moments;
        both are snapshotted before and written back after, so capturing leaves the training
        trajectory as if it never ran.
        """
        bs, n = self.batch_size, len(self.split)
        self.static_idx = torch.arange(bs, device=self.device) % n   # (B,) the graph's input
        params = list(self.model.parameters())
        saved_p = [p.detach().clone() for p in params]
        saved_s = {p: {k: v.clone() for k, v in self.opt.state[p].items() if torch.is_tensor(v)}
                   for p in params if p in self.opt.state}
        t0 = time.perf_counter()
        side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.step(self.static_idx)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
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
        self.capture_seconds = (t1 - t0, time.perf_counter() - t1)

    def train_one_epoch(self, epoch):
        """One pass over the train split in seeded random order; the mean loss."""
        self.model.train()
        n, bs = len(self.split), self.batch_size
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        nb = math.ceil(n / bs)
        losses = torch.zeros(nb, device=self.device)
        if self.use_graph and self.graph is None and n >= bs:
            self.capture()
        bar = tqdm(range(nb), desc=f"epoch {epoch}", leave=False, disable=not self.progress, mininterval=1.0)
        for b in bar:
            idx = perm[b * bs:(b + 1) * bs]
            if self.graph is not None and len(idx) == bs:
                self.static_idx.copy_(idx)
                self.graph.replay()
                losses[b] = self.static_loss
            else:  # eager: CPU, --graph off, or the last partial batch
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
            lr_t.fill_(float(self.opt.param_groups[0]["lr"]))
            self.opt.param_groups[0]["lr"] = lr_t

    def lr(self):
        return float(self.opt.param_groups[0]["lr"])

    def state(self):
        opt = self.opt.state_dict()
        for g in opt["param_groups"]:  # lr as a number: loadable by eager and graph runs alike
            g["lr"] = float(g["lr"])
        sched = self.sched.state_dict()
        sched["_last_lr"] = [float(x) for x in sched.get("_last_lr", [])]
        return {"model": self.model.state_dict(), "optimizer": opt, "scheduler": sched, "rng": rng_state(self.gen)}

    def load_state(self, ckpt):
        """Resume: weights, Adam's moments and hyperparameters, the schedule and every RNG. The
        optimizer keeps its own implementation flags: they say how the saving run computed the
        update (a GPU run's: capturable, fused), and torch would take them from the checkpoint and
        fail on the CPU."""
        lr_t = self.opt.param_groups[0]["lr"]
        self.model.load_state_dict(ckpt["model"])
        opt = dict(ckpt["optimizer"])
        opt["param_groups"] = [{**saved, **{k: now[k] for k in IMPLEMENTATION_FLAGS if k in now}}
                               for saved, now in zip(opt["param_groups"], self.opt.param_groups)]
        self.opt.load_state_dict(opt)
        self.sched.load_state_dict(ckpt["scheduler"])
        if torch.is_tensor(lr_t):  # keep the device lr the graph reads
            lr_t.fill_(float(self.opt.param_groups[0]["lr"]))
            for g in self.opt.param_groups:
                g["lr"] = lr_t
        set_rng_state(ckpt["rng"], self.gen)


def rng_state(gen):
    """Every RNG's state as tensors and plain values (a checkpoint loads with weights_only=True)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()   # key (624,) uint32
    numpy_state = {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    s = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
         "batch_order": gen.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s, gen):
    random.setstate(s["python"])
    n = s["numpy"]
    if isinstance(n, dict):
        n = (n["name"], np.asarray(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)  # a tuple holding a numpy array in checkpoints written before
    torch.set_rng_state(s["torch"])
    gen.set_state(s["batch_order"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def fit(model, train, targets, val, test, loss_options, settings, stage, device, extra=None, refresh_targets=None):
    """Train `model` on the train split for settings.epochs (resuming if asked), evaluating val each
    epoch; keep the last epoch. Returns the test metrics.

    targets: (video, audio, visual) (N, C) per-video targets; refresh_targets: None, or a function
    (model, epoch) -> new targets, called before each epoch (stage 3's --denoise joint). extra: more
    checkpoint entries. The checkpoint is written atomically after every epoch but the last (so
    --resume and kill -9 are safe), then val_metrics.json; finally test is evaluated,
    test_metrics.json written and the last epoch's checkpoint with its val and test metrics.
    """
    out = settings.model_save_dir
    path = os.path.join(out, settings.checkpoint)
    ensure_writable_dir(out, "--model_save_dir")  # fail now, not after the first epoch
    trainer = Trainer(model, train, targets, device, loss_options, settings)
    start = 1
    if settings.resume and os.path.isfile(path):
        ckpt = load_checkpoint(path)
        if ckpt.get("stage") != stage:
            raise AVVPError(f"{path}: checkpoint is from {ckpt.get('stage')}, cannot resume {stage}")
        load_model_strict(model, ckpt, path)
        try:
            trainer.load_state(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise AVVPError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: {e})") from None
        start = ckpt["epoch"] + 1
        print(f"resuming {path} after epoch {ckpt['epoch']}")
    elif settings.resume:
        print(f"--resume: no checkpoint at {path}, starting from scratch")
    save = (lambda epoch, metrics: save_checkpoint(path, trainer.state(), settings.run_args, epoch, metrics,
                                                   stage, extra))
    metrics = None
    last = start - 1  # the epoch the trainer's state belongs to
    for epoch in range(start, settings.epochs + 1):
        if refresh_targets is not None:
            trainer.set_targets(refresh_targets(model, epoch))
        captured = trainer.graph is not None
        with clock("train"):
            loss = trainer.train_one_epoch(epoch)
        train_s = clock.last
        with clock("val"):
            metrics = evaluate(model, val, settings.eval_batch_size)
        cap = ""
        if not captured and trainer.graph is not None:  # the epoch that captured the graph says what it cost
            cap = " (graph warm-up {:.2f}s, capture {:.2f}s)".format(*trainer.capture_seconds)
        print(f"epoch {epoch:3d}/{settings.epochs} loss {loss:.4f} lr {trainer.lr():.2e} "
              f"train {train_s:.2f}s{cap} val {clock.last:.2f}s | val {metrics_line(metrics)}", flush=True)
        last = epoch
        if epoch < settings.epochs:  # the last epoch's state is written once, below, with its test metrics
            with clock("save"):
                save(epoch, {"val": metrics})
    if metrics is not None:
        write_metrics(os.path.join(out, "val_metrics.json"), metrics, {"epoch": settings.epochs})
    with clock("test"):
        test_metrics = evaluate(model, test, settings.eval_batch_size)
    print(llp_eval.format_table(test_metrics, title=f"{stage}: test set ({len(test)} videos), last epoch"))
    write_metrics(os.path.join(out, "test_metrics.json"), test_metrics, {"epoch": settings.epochs})
    with clock("save"):
        # after --epochs 0: the initial weights as epoch 0, an untrained reference the next stage can load
        save(last, {"val": metrics, "test": test_metrics})
    print(memory_line(device))
    print(clock.line())
    print(f"saved {path}")
    return test_metrics


def folds(n, k, seed):
    """Split videos 0..n-1 into k seeded folds of near-equal size: a list of k ascending index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def train_folds(k_folds, frame_pool, train, targets, val, test, loss_options, settings, stage, device, extra=None):
    """The cross-fitting models of --folds K: model k trains on every train video outside seeded fold
    k, with the same targets, recipe and seed, into <model_save_dir>/fold<k>of<K>/, and its checkpoint
    names the videos it never saw (fold -> heldout), so that stage 2 --folds K reads every train
    video with a model blind to it. targets: (video, audio, visual) arrays (N, 25) of the whole
    split; the rest as for fit."""
    for k, rows in enumerate(folds(len(train), k_folds, settings.seed), start=1):
        fold_settings = settings._replace(model_save_dir=fold_dir(settings.model_save_dir, k, k_folds))
        keep = np.setdiff1d(np.arange(len(train)), rows)                          # (N - |fold k|,)
        seed_everything(settings.seed)
        net = MMIL_Net(frame_pool=frame_pool).to(device)
        print(f"{stage} fold {k}/{k_folds}: training on {len(keep)} videos, {len(rows)} held out")
        heldout = [train.filenames[i] for i in rows]
        fit(net, train.subset(keep), tuple(np.asarray(t)[keep] for t in targets), val, test, loss_options,
            fold_settings, stage, device, extra={**(extra or {}), "fold": {"k": k, "folds": k_folds, "heldout": heldout}})
