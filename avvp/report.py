"""Summary of a pipeline run: stage 1 and stage 3 test tables and stage 2's label quality.

    python -m avvp.report [--stage1 DIR] [--stage2 DIR] [--stage3 DIR]
"""
import argparse
import json
import os

from .evaluate import KEYS, format_table
from .utils import AVVPError, cli


def read_json(path):
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: not found (did that stage run?)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage1", default="step1_train_base_model/models", help="stage 1 model_save_dir")
    p.add_argument("--stage2", default="step2_find_exchange/outputs", help="stage 2 output_dir")
    p.add_argument("--stage3", default="step3_retrain/models", help="stage 3 model_save_dir")
    a = p.parse_args(argv)
    for name, d in (("stage 1 (base model)", a.stage1), ("stage 3 (retrained, MA)", a.stage3)):
        m = read_json(os.path.join(d, "test_metrics.json"))
        print(format_table({k: m[k] for k in KEYS}, title=f"{name}: test set"))
    meta = read_json(os.path.join(a.stage2, "estimate_meta.json"))
    print(f"stage 2: dropped {meta['dropped_audio']} audio and {meta['dropped_visual']} visual labels "
          f"of {meta['weak_labels']} weak labels")
    for kind, q in meta.get("quality", {}).items():
        print(f"stage 2 dropped {kind} labels: precision {q['precision']:.3f}, recall {q['recall']:.3f} "
              f"(base rate {q['base_rate']:.3f})")


if __name__ == "__main__":
    main()
