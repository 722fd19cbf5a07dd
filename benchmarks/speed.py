"""Speed of the three-stage pipeline at LLP scale, against a per-file streaming baseline.

    python benchmarks/speed.py                                  # LLP scale: 10,000 / 649 / 1,200 videos
    python benchmarks/speed.py --train 1000 --val 100 --test 200 --epochs 2   # a few minutes on a CPU

Makes random LLP-shaped float32 features (once, in --workdir), runs the three stages with their
seed commands and default recipe as subprocesses (python start-up and loading from disk
included), twice: first with no packed feature cache (it is built), then with it. Then times the
released-style data path for comparison: a DataLoader reading one .npy per modality per video,
batch 16, eager training step, with the released frame order (fc_v on all 80 frames).
Prints per-stage and total wall-clock, epoch and evaluation times, peak memory, and the ratio.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pandas as pd  # noqa: E402

from avvp import llp, synth  # noqa: E402
from avvp.config import path_args, resolve_device  # noqa: E402
from avvp.model import MMIL_Net, mmil_loss  # noqa: E402
from avvp.timing import PhaseClock  # noqa: E402


def make_data(work, n_train, n_val, n_test, seed=0):
    data, feats = work / "data", work / "feats"
    marker = data / f"done_{n_train}_{n_val}_{n_test}"
    if marker.exists():
        return data, feats
    shutil.rmtree(work, ignore_errors=True)
    for d in ("vggish", "res152", "r2plus1d_18"):
        (feats / d).mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    events_a, events_v = [], []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        names = [f"{split[:2]}{i:09d}_0_10" for i in range(n)]
        labels = synth.sample_label_sets(rng, n)
        llp.write_weak(data / llp.WEAK_FILES[split], names, labels)
        if split != "train":
            ta, tv = synth.sample_truth(rng, labels)
            events_a.append(llp.events_table(ta, names))
            events_v.append(llp.events_table(tv, names))

        def write(i, names=names):
            r = np.random.default_rng([seed, n, i])
            vid = names[i][:11]
            np.save(feats / "vggish" / f"{vid}.npy", r.standard_normal((10, 128), dtype=np.float32))
            np.save(feats / "res152" / f"{vid}.npy", r.random((80, 2048), dtype=np.float32))
            np.save(feats / "r2plus1d_18" / f"{vid}.npy", r.standard_normal((10, 512), dtype=np.float32))
        with ThreadPoolExecutor(os.cpu_count()) as ex:
            list(ex.map(write, range(n)))
    llp.write_tsv(pd.concat(events_a), data / llp.EVAL_FILES["audio"])
    llp.write_tsv(pd.concat(events_v), data / llp.EVAL_FILES["visual"])
    marker.touch()
    return data, feats


def run_pipeline(data, feats, work, args):
    common = path_args(data, feats) + ["--no_progress", "--device", args.device, "--feature_cache", args.feature_cache]
    train_flags = (["--graph", "off"] if args.no_graph else []) + args.stage_args.split()
    ep = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    stages = [("stage1", "step1_train_base_model", ["--mode", "train", *ep, *train_flags,
                                                    "--model_save_dir", f"{work}/m1"]),
              ("stage2", "step2_find_exchange", ["--mode", "estimate_labels", "--model_save_dir", f"{work}/m1",
                                                 "--output_dir", f"{work}/s2"]),
              ("stage3", "step3_retrain", ["--mode", "retrain", *ep, *train_flags, "--model_save_dir", f"{work}/m3",
                                           "--label_ma", f"{work}/s2/modality_aware_labels.csv"])]
    res = {}
    for name, folder, extra in stages:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "main_avvp.py", *common, *extra], cwd=ROOT / folder,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        trains = [float(x) for x in re.findall(r"^epoch .* train ([\d.]+)s", r.stdout, re.M)]
        capture = re.search(r"graph warm-up ([\d.]+)s, capture ([\d.]+)s", r.stdout)
        vals = [float(x) for x in re.findall(r"val ([\d.]+)s \|", r.stdout)]
        mem = re.findall(r"peak memory: (.*)", r.stdout)
        dev = re.findall(r"device: (.*)", r.stdout)
        phases = PhaseClock.parse(r.stdout)
        res[name] = dict(wall=wall, phases=phases, epoch=np.median(trains) if trains else float("nan"),
                         first_epoch=trains[0] if trains else float("nan"),
                         capture=tuple(map(float, capture.groups())) if capture else None,
                         val=np.median(vals) if vals else float("nan"), mem=mem[-1] if mem else "",
                         device=dev[0] if dev else "", tail=r.stdout.strip().splitlines()[-8:])
    return res


class PerFileDataset(torch.utils.data.Dataset):
    """Released-style data path: three np.load per video, per sample."""

    def __init__(self, feats, names, labels):
        self.feats, self.names, self.labels = feats, names, labels

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        vid = self.names[i][:11]
        return (np.load(self.feats / "vggish" / f"{vid}.npy"), np.load(self.feats / "res152" / f"{vid}.npy"),
                np.load(self.feats / "r2plus1d_18" / f"{vid}.npy"), self.labels[i])


def baseline_epoch(data, feats, device, max_batches=None, workers=None):
    weak = llp.read_weak(data / llp.WEAK_FILES["train"])
    ds = PerFileDataset(feats, weak.filenames, weak.labels)
    workers = os.cpu_count() if workers is None else workers
    dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=workers,
                                     pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = MMIL_Net(frame_pool="late").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    nb = len(dl) if max_batches is None else min(max_batches, len(dl))
    t0, done = time.perf_counter(), 0
    for a, v, s, y in dl:
        a, v, s, y = (t.to(device).float() for t in (a, v, s, y))
        out = model(a, v, s)
        loss, _ = mmil_loss(out, y, y, 0.9 * y + 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if done >= nb:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * len(dl) / done, done, len(dl)


LLP_SCALE = (10000, 649, 1200)  # train / val / test videos
TARGET_S = 40.0  # three stages, 12 + 12 epochs, loading included (docs/PERFORMANCE.md)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=649)
    p.add_argument("--test", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's 12 epochs (smaller CPU runs)")
    p.add_argument("--workdir", default="/tmp/avvp_speed")
    p.add_argument("--device", default="auto")
    p.add_argument("--feature_cache", default="auto")
    p.add_argument("--no_graph", action="store_true")
    p.add_argument("--baseline_batches", type=int, default=200, help="baseline batches timed (extrapolated to an epoch)")
    p.add_argument("--skip_cold", action="store_true", help="only the run with a packed cache")
    p.add_argument("--skip_warm", action="store_true", help="only the run that builds the packed cache")
    p.add_argument("--skip_baseline", action="store_true", help="no per-file baseline epoch")
    p.add_argument("--stage_args", default="", help="extra flags for the training stages, e.g. '--fused_adam off'")
    args = p.parse_args()
    work = Path(args.workdir)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    data, feats = make_data(work, args.train, args.val, args.test)
    print(f"data: {args.train}/{args.val}/{args.test} videos in {work} ({time.perf_counter() - t0:.1f}s to make)")
    hdr = (f"{'run':14s} {'stage1':>8s} {'stage2':>8s} {'stage3':>8s} {'total':>8s} {'epoch':>7s} "
           f"{'1st ep':>7s} {'val':>6s}  peak memory (stage 3)")

    def row(label, r):
        tot = sum(r[s]["wall"] for s in r)
        return (f"{label:14s} {r['stage1']['wall']:8.1f} {r['stage2']['wall']:8.1f} {r['stage3']['wall']:8.1f} "
                f"{tot:8.1f} {r['stage1']['epoch']:7.2f} {r['stage1']['first_epoch']:7.2f} {r['stage1']['val']:6.2f}  "
                f"{r['stage3']['mem']}")

    runs = []
    if not args.skip_cold:  # printed as soon as each part ends: a time limit still leaves figures
        for d in ("vggish", "res152", "r2plus1d_18"):
            shutil.rmtree(feats / d / ".packed", ignore_errors=True)
        runs.append(("no cache yet", run_pipeline(data, feats, work, args)))
        print(f"device: {runs[0][1]['stage1']['device']}; cpu cores: {os.cpu_count()}\n{hdr}\n{row(*runs[-1])}",
              flush=True)
    base = None
    if not args.skip_baseline:
        base, done, nb = baseline_epoch(data, feats, device, args.baseline_batches)
        print(f"baseline (per-file .npy DataLoader, batch 16, eager, fc_v on 80 frames): {base:.2f} s/epoch "
              f"(timed {done} of {nb} batches)", flush=True)
    if not args.skip_warm:
        runs.append(("packed cache", run_pipeline(data, feats, work, args)))
    print(f"\ndevice: {runs[-1][1]['stage1']['device']}; cpu cores: {os.cpu_count()}; "
          f"stage flags: {args.stage_args or '(defaults)'}\n{hdr}")
    for r in runs:
        print(row(*r))
    print("\nwhere the time went (seconds, from each stage's `time:` line; wall = measured around the process):")
    for label, r in runs:
        for st in ("stage1", "stage2", "stage3"):
            ph = r[st]["phases"]
            cap = r[st].get("capture")
            cap = f" (of train: graph warm-up {cap[0]:.2f}, capture {cap[1]:.2f})" if cap else ""
            print(f"  {label:14s} {st}: wall {r[st]['wall']:.2f} | " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items())
                  + cap)
    if args.epochs is None and (args.train, args.val, args.test) == LLP_SCALE:
        for label, r in runs:  # the project's goal for the whole recipe at LLP scale on one GPU
            tot = sum(r[s]["wall"] for s in r)
            verdict = "met" if tot <= TARGET_S else f"missed by {tot - TARGET_S:.1f} s"
            print(f"target: full recipe at LLP scale in <= {TARGET_S:.0f} s on one GPU: {label} {tot:.1f} s -> {verdict}")
    ours = runs[-1][1]["stage1"]["epoch"]
    if base is not None:
        print(f"baseline {base:.2f} s/epoch; ours {ours:.2f} s/epoch -> {base / ours:.1f}x per epoch")
    print("stage 3 tail:\n  " + "\n  ".join(runs[-1][1]["stage3"]["tail"]))


if __name__ == "__main__":
    main()
