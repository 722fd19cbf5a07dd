"""Where one stage's wall-clock goes, function by function (cProfile), run in-process.

    python benchmarks/stage_profile.py --step step1_train_base_model --top 30 -- --mode train --epochs 1 ...

Everything after `--` is the stage's own command line (run from its folder, as the seed commands
are). Prints the stage's output, then the `--top` functions by cumulative time (and half as many by
own time), and whether the
run imported torch._dynamo or pandas (the training stages should not: avvp/optim.py, avvp.llp.Table).
"""
import argparse
import cProfile
import os
import pstats
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", default="step1_train_base_model")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("stage_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    folder = ROOT / args.step
    os.chdir(folder)
    sys.path[:0] = [str(folder), str(ROOT)]
    sys.argv = ["main_avvp.py", *stage_args]
    os._exit = sys.exit  # the stage's fast exit (avvp.utils.run_program) would end this process before the report
    prof = cProfile.Profile()
    try:
        prof.runcall(runpy.run_path, "main_avvp.py", run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            print(f"stage exited with {e.code}")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(max(args.top // 2, 5))
    print("torch._dynamo imported:", "torch._dynamo" in sys.modules)
    print("pandas imported:", "pandas" in sys.modules)


if __name__ == "__main__":
    main()
