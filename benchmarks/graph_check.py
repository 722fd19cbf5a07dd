"""CUDA-graph training step vs eager: same batches, same initial weights, compare loss trajectories.

    python benchmarks/graph_check.py [--steps 300] [--videos 2000]

Dropout is set to 0 in both so that the two paths see identical arithmetic (with dropout the
random masks are drawn differently by the two paths). Prints the largest loss difference and
the largest weight difference after all steps, and the step times of both paths; then the same
for the graph path's Adam, fused (the default since the seventh session) against foreach
(--fused_adam off), beside eager against graph with foreach. Then checks the
stages' optimizer (avvp.optim.Adam) against torch.optim.Adam on both paths, and times the
checkpoint snapshot (one copy per tensor vs avvp.utils.HostSnapshot's gathered copy, same bytes)
and predict() eager vs replayed from an EvalGraph (stage 2's three swap passes: same bits, time).
"""
import argparse
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avvp import engine  # noqa: E402
from avvp.model import MMIL_Net  # noqa: E402
from avvp.utils import HostSnapshot, _host_copy, _map_leaves  # noqa: E402


def make_split(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {"audio": torch.randn(n, 10, 128, generator=g), "video": torch.rand(n, 10, 2048, generator=g),
             "st": torch.randn(n, 10, 512, generator=g)}
    labels = (torch.rand(n, 25, generator=g) < 0.07).float()
    labels[torch.arange(n), torch.randint(0, 25, (n,), generator=g)] = 1
    return engine.Split([f"v{i}" for i in range(n)], labels.numpy(),
                        {k: v.to(device) for k, v in feats.items()}, device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_args(batch_size, graph, fused_adam="auto"):
    """The recipe's training flags, as the stages' argparse gives them."""
    return engine.default_args(batch_size=batch_size, graph=graph, no_progress=True, fused_adam=fused_adam)


def timed_epochs(trainer, device, epochs):
    """Train `epochs` epochs; (epoch losses, wall-clock seconds of each, device synchronised)."""
    losses, times = [], []
    for e in range(1, epochs + 1):
        sync(device)
        t0 = time.perf_counter()
        losses.append(trainer.train_epoch(e))
        sync(device)
        times.append(time.perf_counter() - t0)
    return losses, times


def run(graph, split, base_model, args, device, epochs, fused_adam="auto"):
    model = copy.deepcopy(base_model)
    tr = engine.Trainer(trainer_args(args.batch_size, "on" if graph else "off", fused_adam), model, split,
                        engine.weak_targets(split.labels, 0.1), device)
    losses, times = timed_epochs(tr, device, epochs)
    return losses, times, model, tr


def adam_check(split, base_model, args, device, epochs=1):
    """avvp.optim.Adam (the stages' optimizer) against torch.optim.Adam, eager and graph paths:
    final weights after `epochs` epochs, max |difference|, with a torch-vs-torch repeat as the floor
    (0 where the device runs deterministically)."""
    def torch_adam(params, lr, *, capturable=False, fused=None):
        return torch.optim.Adam(params, lr=lr, capturable=capturable, fused=fused)

    def weights(graph):
        return run(graph, split, base_model, args, device, epochs)[2].parameters()

    own = engine.make_adam
    for graph in (False, True):
        ours = [p.detach().clone() for p in weights(graph)]
        engine.make_adam = torch_adam
        try:
            ref, again = ([p.detach().clone() for p in weights(graph)] for _ in range(2))
        finally:
            engine.make_adam = own
        diff = max((a - b).abs().max().item() for a, b in zip(ours, ref))
        floor = max((a - b).abs().max().item() for a, b in zip(again, ref))
        print(f"avvp.optim.Adam vs torch.optim.Adam, {'graph' if graph else 'eager'} path, {epochs} epoch(s): "
              f"max |weight diff| = {diff:.2e} (torch vs torch: {floor:.2e})", flush=True)


def differences(losses_a, model_a, losses_b, model_b):
    dl = max(abs(a - b) for a, b in zip(losses_a, losses_b))
    dw = max((pa - pb).abs().max().item() for pa, pb in zip(model_a.parameters(), model_b.parameters()))
    return f"max |epoch loss diff| = {dl:.2e}, max |weight diff| = {dw:.2e}"


def saved_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def snapshot_check(trainer, device, reps=7):
    """A checkpoint's state to host memory, as the background saver takes it each epoch: the old
    per-tensor copies (one synchronous copy each) against HostSnapshot (one asynchronous copy per
    dtype; the main thread waits only for the launch, the writer thread for the rest). Medians."""
    state = trainer.state()
    old, launch, ready, same = [], [], [], True
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        want = _host_copy(state)
        old.append(time.perf_counter() - t0)
        sync(device)
        t0 = time.perf_counter()
        snap = HostSnapshot(state)
        launch.append(time.perf_counter() - t0)
        got = snap.resolve()
        ready.append(time.perf_counter() - t0)
        same = same and saved_bytes(got) == saved_bytes(want)
    tensors = []
    _map_leaves(state, tensors.append, torch.is_tensor)
    n = len(tensors)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    print(f"checkpoint snapshot ({n} tensors): per-tensor copies {ms(old):.1f} ms on the main thread; "
          f"HostSnapshot {ms(launch):.1f} ms on the main thread, {ms(ready):.1f} ms until resolved; "
          f"same bytes: {same}", flush=True)


def eval_graph_check(model, split, device, batch_size=256, reps=3):
    """Stage 2's three passes (original, visual-swapped, audio-swapped) over `split`, eager and
    from an EvalGraph: the outputs must be the same bits. Median seconds of `reps` rounds each."""
    partner = np.random.default_rng(0).permutation(len(split))
    keys = ("audio_prob", "visual_prob")
    times, results = {False: [], True: []}, {}
    for _ in range(reps):
        for graph in (False, True):  # the first graph round includes recording it
            sync(device)
            t0 = time.perf_counter()
            results[graph] = [engine.predict(model, split, batch_size, swap=sw, keys=keys, name="check",
                                             graph=graph and device.type == "cuda")  # CPU: eager twice
                              for sw in (None, (partner, "visual"), (partner, "audio"))]
            sync(device)
            times[graph].append(time.perf_counter() - t0)
    same = all(np.array_equal(a[k], b[k]) for a, b in zip(results[False], results[True]) for k in keys)
    print(f"predict, three swap passes over {len(split)} videos at batch {batch_size}: eager "
          f"{statistics.median(times[False]):.3f} s, EvalGraph {statistics.median(times[True]):.3f} s "
          f"(first round, recording included: {times[True][0]:.3f} s); same bits: {same}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--adam_videos", type=int, default=2000, help="videos for the optimizer check (0: skip it)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # on CPU both paths are eager
    torch.manual_seed(0)
    split = make_split(args.videos, device)
    base = MMIL_Net(dropout=0.0).to(device)
    le, te, me, tre = run(False, split, base, args, device, args.epochs)
    lg, tg, mg, trainer = run(True, split, base, args, device, args.epochs)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (graph path unavailable: eager twice)"
    print(f"{name}: {args.videos} videos, batch {args.batch_size}, {args.epochs} epochs")
    print(f"eager epoch losses {['%.6f' % x for x in le]}; times {['%.2f' % x for x in te]} s")
    print(f"graph epoch losses {['%.6f' % x for x in lg]}; times {['%.2f' % x for x in tg]} s (1st includes capture)")
    print(f"eager vs graph (defaults: Adam {tre.adam_update} / {trainer.adam_update}): {differences(le, me, lg, mg)}")
    print(f"epoch time eager {min(te):.2f} s, graph {min(tg):.2f} s -> {min(te) / min(tg):.1f}x", flush=True)
    # the graph path's Adam before the seventh session (foreach, capturable): how far the default's
    # fused kernel moves a run, beside how far the graph itself moves it from eager
    lf, tf, mf, trf = run(True, split, base, args, device, args.epochs, fused_adam="off")
    print(f"graph path, Adam {trainer.adam_update} vs {trf.adam_update} (--fused_adam off): {differences(lg, mg, lf, mf)}; "
          f"epoch time {min(tg):.2f} s vs {min(tf):.2f} s")
    print(f"eager vs graph with --fused_adam off (Adam {tre.adam_update} / {trf.adam_update}): "
          f"{differences(le, me, lf, mf)}", flush=True)
    snapshot_check(trainer, device)
    eval_graph_check(mg, split, device)
    if args.adam_videos:
        n = min(args.adam_videos, len(split))
        sub = engine.Split(split.filenames[:n], split.labels[:n], {k: v[:n] for k, v in split.feats.items()}, device)
        adam_check(sub, base, args, device)


if __name__ == "__main__":
    main()
