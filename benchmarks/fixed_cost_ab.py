"""What a training stage costs besides training: two checkouts, interleaved runs, medians.

    git worktree add /tmp/old <commit>
    python benchmarks/fixed_cost_ab.py --old /tmp/old --data /tmp/avvp_speed --reps 4

Runs stage 1 (`--mode train`) and stage 3 (`--mode retrain`) with `--epochs 0` (load every split,
evaluate test, write the checkpoint) from each checkout in turn, on the data speed.py makes
(--data: its workdir, holding data/, feats/ and s2/modality_aware_labels.csv), with bytecode as
installed and without (PYTHONPYCACHEPREFIX = an empty folder, bytecode writes off: what an install
that keeps no bytecode costs every process). Prints the median wall-clock around each process,
the phases of its `time:` line, and the time from its last output line to its exit.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from avvp import engine  # noqa: E402
from avvp.utils import PhaseClock  # noqa: E402

PHASES = ("wall", "start-up", "load", "save", "other", "exit")


def stage_argv(stage, data):
    common = engine.path_args(data / "data", data / "feats") + ["--epochs", "0", "--no_progress"]
    if stage == 1:
        return "step1_train_base_model", ["--mode", "train", *common]
    return "step3_retrain", ["--mode", "retrain", *common, "--label_ma", str(data / "s2" / "modality_aware_labels.csv")]


def run(root, stage, data, no_bytecode, out_dir, empty):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    if no_bytecode:
        env["PYTHONPYCACHEPREFIX"] = empty
    folder, argv = stage_argv(stage, data)
    argv += ["--model_save_dir", str(out_dir / f"{Path(root).name}_{stage}")]
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-u", "main_avvp.py", *argv], cwd=Path(root) / folder,
                         stdout=subprocess.PIPE, text=True, env=env)
    lines, last = [], t0
    for line in p.stdout:
        last = time.perf_counter()
        lines.append(line)
    p.wait()
    end = time.perf_counter()
    if p.returncode:
        sys.exit(f"{root} stage {stage} failed ({p.returncode}):\n{''.join(lines[-20:])}")
    return dict(PhaseClock.parse("".join(lines)), wall=end - t0, exit=end - last)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="the other checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--new", default=str(ROOT), help="this checkout")
    p.add_argument("--data", default="/tmp/avvp_speed", help="speed.py's workdir (LLP-sized data)")
    p.add_argument("--reps", type=int, default=4)
    args = p.parse_args()
    data = Path(args.data)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "no_bytecode")
        os.makedirs(empty)
        for _ in range(args.reps):
            for no_bytecode in (False, True):
                for stage in (1, 3):
                    for label, root in (("old", args.old), ("new", args.new)):
                        key = f"{label} stage {stage}, {'no bytecode' if no_bytecode else 'bytecode'}"
                        res.setdefault(key, []).append(run(root, stage, data, no_bytecode, Path(tmp), empty))
    print(f"medians of {args.reps} interleaved runs (seconds); old = {args.old}, new = {args.new}")
    for key in sorted(res, key=lambda k: (k.split(",")[1], k.split(",")[0][4:], k[:3] != "old")):
        runs = res[key]
        med = {f: statistics.median(r.get(f, 0.0) for r in runs) for f in PHASES}
        print(f"{key:32s} " + "  ".join(f"{f} {m:.2f}" for f, m in med.items())
              + "   walls " + " ".join(f"{r['wall']:.2f}" for r in runs))


if __name__ == "__main__":
    main()
