"""What one training step costs on this device, and what the speed options buy.

    python benchmarks/step_profile.py                  # 10,000 random videos resident, batch 16
    python benchmarks/step_profile.py --videos 500     # a quick run on a CPU

1. Epoch time of the training path (on CUDA: features resident, step in one CUDA graph) for the
   default (on CUDA: Adam's fused kernel), for --fused_adam off (the foreach update, the graph
   path's default up to the sixth session), for --stack_modalities, and for the attention call
   this project used before (need_weights=False, a fused SDPA kernel), for comparison. Each variant gets a
   warm-up epoch (capture included), then `--epochs` timed epochs; same data, seed and initial
   weights, dropout on as in training.
2. torch.profiler over `--profile_steps` eager steps of the default: launched kernels (CUDA) or
   operators (CPU) per step, and the top ones by device time. This says whether a step is bound by
   launches (many tiny kernels) or by a few large ones.
"""
import argparse
import copy
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from avvp import engine  # noqa: E402
from avvp.model import MMIL_Net  # noqa: E402
from graph_check import make_split, sync, timed_epochs, trainer_args  # noqa: E402

VARIANTS = {"default": {},  # on CUDA: the graph path with Adam's fused kernel (--fused_adam auto)
            "foreach_adam": {"fused_adam": "off"},  # the graph path's Adam up to the sixth session
            "stack_modalities": {"stack_modalities": True},
            "sdpa_attention": {"sdpa": True}}  # the attention call before session 4, for comparison


def use_sdpa_attention(model):
    """Call every attention layer with need_weights=False, as this project did before it switched
    to the released call: torch then runs a fused SDPA kernel instead of the explicit softmax path."""
    for m in model.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            m.forward = (lambda *a, _f=m.forward, **k: _f(*a, **{**k, "need_weights": False}))


def time_variant(split, base, device, batch_size, epochs, **opts):
    model = copy.deepcopy(base)
    model.stack_modalities = opts.get("stack_modalities", False)
    if opts.get("sdpa"):
        use_sdpa_attention(model)
    tr = engine.Trainer(trainer_args(batch_size, "auto", opts.get("fused_adam", "auto")), model, split,
                        engine.weak_targets(split.labels, 0.1), device)
    return timed_epochs(tr, device, epochs + 1)  # the first: warm-up (graph capture, allocator, cuBLAS)


def profile_steps(split, base, device, batch_size, steps):
    from torch.profiler import ProfilerActivity, profile
    model = copy.deepcopy(base)
    tr = engine.Trainer(trainer_args(batch_size, "off"), model, split, engine.weak_targets(split.labels, 0.1), device)
    idx = torch.arange(batch_size, device=device)
    for _ in range(3):
        tr.step(idx)
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            tr.step(idx)
        sync(device)
    per = defaultdict(lambda: [0, 0.0])
    if device.type == "cuda":  # kernels as launched on the device
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per[e.name][0] += 1
                per[e.name][1] += e.time_range.elapsed_us()  # a kernel's own duration on the device
    else:  # leaf operators on the CPU
        for e in prof.events():
            if not e.cpu_children:
                per[e.name][0] += 1
                per[e.name][1] += e.self_cpu_time_total
    n = sum(c for c, _ in per.values()) / steps
    total_us = sum(t for _, t in per.values()) / steps
    what = "kernels" if device.type == "cuda" else "leaf operators"
    print(f"\neager step, profiled over {steps} steps: {n:.0f} {what} per step, "
          f"{total_us / 1000:.3f} ms of {'GPU' if device.type == 'cuda' else 'CPU'} time per step")
    print(f"{'count/step':>10s} {'us/step':>9s} {'share':>6s}  name")
    for name, (c, t) in sorted(per.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{c / steps:10.1f} {t / steps:9.1f} {100 * t / max(total_us * steps, 1e-9):5.1f}%  {name[:110]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per variant, after one warm-up epoch")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--profile_steps", type=int, default=20)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    split = make_split(args.videos, device)
    base = MMIL_Net().to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    path = "resident features, CUDA graph" if device.type == "cuda" else "eager (no CUDA graph on CPU)"
    print(f"{name}, torch {torch.__version__}: {args.videos} videos, batch {args.batch_size}, {path}")
    print(f"{'variant':18s} {'warm-up':>8s} {'epoch':>8s} {'vs default':>10s}  losses")
    ref = None
    for v in args.variants.split(","):
        try:
            losses, times = time_variant(split, base, device, args.batch_size, args.epochs, **VARIANTS[v])
        except Exception as e:  # e.g. an option this torch build cannot capture: report it, time the rest
            print(f"{v:18s} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        ep = min(times[1:])
        ref = ref or ep
        print(f"{v:18s} {times[0]:8.2f} {ep:8.2f} {ref / ep:9.2f}x  {' '.join('%.4f' % x for x in losses)}",
              flush=True)
    profile_steps(split, base, device, args.batch_size, args.profile_steps)


if __name__ == "__main__":
    main()
