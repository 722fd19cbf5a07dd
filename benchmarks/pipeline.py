"""Does it work? HAN baseline vs stage 1 vs stage 3 (full MA) vs stage 3 on oracle labels, over seeds.

    python benchmarks/pipeline.py [--seeds 1 2 3] [--data_dir data --feats_dir feats] [--workdir runs/bench]

On the default synthetic set (made first if absent), for every seed:
  HAN     stage 1 with --contrastive_weight 0 (no contrastive term, no modality-aware labels)
  stage1  stage 1 as released (contrastive term)
  stage2  modality-aware labels, scored against the synthetic truth (precision / recall of drops)
  stage3  retrained on stage 2's labels (full MA)
  oracle  stage 3 trained on the TRUE modality labels of the synthetic truth files: separates
          "the data rewards modality-aware labels" from "stage 2 finds them"
  labels_only         the paper's "MA, labels only": stage 2 on the HAN model, stage 3 without the
                      contrastive term
  oracle_no_contrast  oracle labels, stage 3 without the contrastive term
A run whose test_metrics.json exists is not run again (so variants can be added to a finished run).
All runs use the same recipe (12 epochs, last epoch, batch 16). Prints mean +- std over seeds of
the 10 LLP test numbers for each, and writes benchmarks/results/pipeline.{json,md}.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))
from avvp import llp, synth  # noqa: E402
from avvp.config import SEED, ArgumentParser, number, path_args  # noqa: E402
from avvp.errors import AVVPError, cli  # noqa: E402
from avvp.evaluate import KEYS  # noqa: E402


def shown(path):
    """A path as a results file records it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


NAMES = {"seg_a": "seg A", "seg_v": "seg V", "seg_av": "seg AV", "seg_type": "seg Type", "seg_event": "seg Event",
         "evt_a": "evt A", "evt_v": "evt V", "evt_av": "evt AV", "evt_type": "evt Type", "evt_event": "evt Event"}


FAILED = threading.Event()  # a run failed: the runs not started yet (other seeds' too) are not started


def stage(folder, args, log, done=None):
    """Run one stage from its folder, logged; its error line (or last line) as an AVVPError when it fails."""
    if done is not None and Path(done).is_file():
        return 0.0
    if FAILED.is_set():
        raise AVVPError("stopped: an earlier run failed")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "main_avvp.py", *args], cwd=ROOT / folder, capture_output=True, text=True)
    log.write(f"$ (cd {folder} && python main_avvp.py {' '.join(args)})\n{r.stdout}\n{r.stderr}\n")
    log.flush()
    if r.returncode:
        FAILED.set()
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or ["(no output)"]
        last = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1])
        raise AVVPError(f"{folder} --mode {args[args.index('--mode') + 1] if '--mode' in args else '?'} failed "
                        f"({last.removeprefix('error: ')}); its log: {log.name}")
    return time.perf_counter() - t0


def bench_parser(description, workdir):
    """The flags both benchmarks share; paths are made absolute (the stages run from their folders)."""
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=SEED, nargs="+", default=[1, 2, 3])
    p.add_argument("--data_dir", type=os.path.abspath, default=str(ROOT / "data"))
    p.add_argument("--feats_dir", type=os.path.abspath, default=str(ROOT / "feats"))
    p.add_argument("--workdir", type=os.path.abspath, default=str(ROOT / "runs" / workdir))
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=number(0, kind=int), default=12, help="epochs of stages 1 and 3 (12: the released recipe)")
    return p


def check_synthetic(data):
    """The benchmarks score stage 2's drops against the synthetic train truth: a set without it
    (real LLP has none) is a one-line error."""
    missing = [t for t in truth_paths(data) if not os.path.isfile(t)]
    if (Path(data) / llp.WEAK_FILES["train"]).is_file() and missing:
        raise AVVPError(f"{missing[0]}: not found; the benchmarks score stage 2 against the synthetic train truth, "
                        f"which {data} lacks (real LLP has none): point --data_dir / --feats_dir at a synthetic set")


def truth_paths(data):
    """The synthetic set's train truth files, audio then visual."""
    return [f"{data}/synthetic_train_eval_{kind}.csv" for kind in ("audio", "visual")]


def truth_flags(data):
    """Stage 2's flags that score its drops against the synthetic train truth."""
    audio, visual = truth_paths(data)
    return ["--train_truth_audio", audio, "--train_truth_visual", visual]


def train_presence(data, filenames):
    """Whether each (train video, class) is truly audible and truly visible: (N, 25) bool each."""
    return [llp.read_dense_matrix(p, filenames).any(axis=2) for p in truth_paths(data)]


def oracle_csv(data, path):
    train = llp.read_weak(data / llp.WEAK_FILES["train"])
    ta, tv = train_presence(data, train.filenames)
    y = train.labels > 0
    llp.write_modality_labels(path, train.filenames, y, y & ta, y & tv)


@cli
def main():
    p = bench_parser(__doc__, "bench")
    p.add_argument("--extras", action="store_true",
                   help="also run labels_only and oracle_no_contrast (3 more runs per seed)")
    p.add_argument("--runs", nargs="+", choices=["HAN", "stage1", "stage3", "oracle"],
                   default=["HAN", "stage1", "stage3", "oracle"], help="which runs (stage3 includes stage 1 and 2)")
    p.add_argument("--stage_args", default="",
                   help="extra flags for the training stages, e.g. '--fused_adam on' (use its own --workdir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline"))
    a = p.parse_args()
    data, feats, work = Path(a.data_dir), Path(a.feats_dir), Path(a.workdir)
    check_synthetic(data)
    if not (data / llp.WEAK_FILES["train"]).is_file():
        synth.generate(data, feats)
    work.mkdir(parents=True, exist_ok=True)
    paths = [*path_args(data, feats), "--no_progress", "--device", a.device]
    training = ["--epochs", str(a.epochs), *a.stage_args.split()]  # stage 2 trains nothing
    runs = set(a.runs) | ({"stage1"} if "stage3" in a.runs else set())
    oracle = work / "oracle_labels.csv"
    oracle_csv(data, oracle)
    variants = {"HAN": "han", "stage1": "stage1", "stage3": "stage3", "labels_only": "labels_only",
                "oracle": "oracle", "oracle_no_contrast": "oracle_no_contrast"}
    res = {k: [] for k in variants}
    seeds_of = {k: [] for k in variants}  # which seeds each row averages (extras may exist for fewer)
    quality_han, quality, times = {}, {}, []  # stage-2 quality keyed by seed
    with open(work / "log.txt", "w") as log:
        for s in a.seeds:
            w = work / f"seed{s}"
            s2 = [*paths, "--seed", str(s)]
            sp = [*s2, *training]
            t0 = time.perf_counter()
            ran = 0.0  # seconds spent in stages actually run for this seed (0: all were done already)
            truth = truth_flags(data)
            no_c = ["--contrastive_weight", "0"]
            if "HAN" in runs or a.extras:
                ran += stage("step1_train_base_model", ["--mode", "train", *sp, *no_c, "--model_save_dir", f"{w}/han"],
                      log, w / "han" / "test_metrics.json")
            if "stage1" in runs:
                ran += stage("step1_train_base_model", ["--mode", "train", *sp, "--model_save_dir", f"{w}/stage1"], log,
                      w / "stage1" / "test_metrics.json")
            if "stage3" in runs:
                ran += stage("step2_find_exchange", ["--mode", "estimate_labels", *s2, "--model_save_dir", f"{w}/stage1",
                                              "--output_dir", f"{w}/stage2", *truth], log,
                      w / "stage2" / "estimate_meta.json")
                ran += stage("step3_retrain", ["--mode", "retrain", *sp, "--model_save_dir", f"{w}/stage3",
                                        "--label_ma", f"{w}/stage2/modality_aware_labels.csv"], log,
                      w / "stage3" / "test_metrics.json")
            if "oracle" in runs:
                ran += stage("step3_retrain", ["--mode", "retrain", *sp, "--model_save_dir", f"{w}/oracle",
                                        "--label_ma", str(oracle)], log, w / "oracle" / "test_metrics.json")
            if a.extras:
                ran += stage("step2_find_exchange", ["--mode", "estimate_labels", *s2, "--model_save_dir", f"{w}/han",
                                              "--output_dir", f"{w}/stage2_han", *truth], log,
                      w / "stage2_han" / "estimate_meta.json")
                ran += stage("step3_retrain", ["--mode", "retrain", *sp, *no_c, "--model_save_dir", f"{w}/labels_only",
                                        "--label_ma", f"{w}/stage2_han/modality_aware_labels.csv"], log,
                      w / "labels_only" / "test_metrics.json")
                ran += stage("step3_retrain", ["--mode", "retrain", *sp, *no_c, "--model_save_dir", f"{w}/oracle_no_contrast",
                                        "--label_ma", str(oracle)], log, w / "oracle_no_contrast" / "test_metrics.json")
            if ran:
                times.append(time.perf_counter() - t0)
            print(f"seed {s}: " + (f"done in {time.perf_counter() - t0:.0f}s" if ran else "every run already done"),
                  flush=True)
        for s in a.seeds:
            w = work / f"seed{s}"
            for k, d in variants.items():
                f = w / d / "test_metrics.json"
                if f.is_file():
                    res[k].append(json.loads(f.read_text()))
                    seeds_of[k].append(s)
            for qs, d in ((quality, "stage2"), (quality_han, "stage2_han")):
                f = w / d / "estimate_meta.json"
                if f.is_file():
                    qs[s] = json.loads(f.read_text())["quality"]

    lines = [f"Synthetic LLP set in {shown(data)} ({len(llp.read_weak(data / llp.WEAK_FILES['train']).filenames)} train videos), test split; mean +- std over seeds {a.seeds}; "
             f"{a.epochs} epochs, last epoch, batch 16; stage flags: {a.stage_args or '(defaults)'}.", "",
             "| method | " + " | ".join(NAMES[k] for k in KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    summary = {}
    for name, runs in res.items():
        if not runs:
            continue
        m = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in KEYS}
        summary[name] = m
        label = name if seeds_of[name] == a.seeds else f"{name} (seeds {', '.join(map(str, seeds_of[name]))})"
        lines.append(f"| {label} | " + " | ".join(f"{m[k][0]:.1f} +- {m[k][1]:.1f}" for k in KEYS) + " |")
    lines.append("")
    for (src, qs), kind in ((x, k) for x in (("stage-1 model", quality), ("HAN model", quality_han))
                            for k in ("audio", "visual")):
        q = {s: x[kind] for s, x in qs.items()}
        if not q:
            continue
        lines.append(f"stage 2 on the {src}, dropped {kind} labels: "
                     + "; ".join(f"seed {s}: {x['dropped']} dropped, precision {x['precision']:.3f}, "
                                 f"recall {x['recall']:.3f}" for s, x in q.items())
                     + f" (base rate {next(iter(q.values()))['base_rate']:.3f})")
    if times:
        lines.append(f"wall-clock per seed, over the {len(times)} seed(s) run in this call: {np.mean(times):.0f} s")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "runs": res, "seeds_of": seeds_of,
                                                    "quality": quality, "quality_han": quality_han,
                                                    "seeds": a.seeds, "epochs": a.epochs,
                                                    "stage_args": a.stage_args}, indent=1))


if __name__ == "__main__":
    main()
