"""The benchmark scripts run end to end at a tiny size (their figures only mean something at LLP
scale, but a long GPU run must not be the first to find them broken): benchmarks/speed.py says
where each stage's time went, benchmarks/pipeline.py tabulates the methods over seeds."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd

from avvp import llp
from avvp.evaluate import KEYS
from conftest import ROOT, stage_env


def bench(script, *args, timeout=300):
    r = subprocess.run([sys.executable, f"benchmarks/{script}", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=stage_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_speed_runs_the_three_stages_and_says_where_the_time_went(tmp_path):
    out = bench("speed.py", "--train", 40, "--val", 10, "--test", 10, "--epochs", 1, "--skip_baseline",
                "--skip_cold", "--workdir", tmp_path / "w", "--device", "cpu")
    assert "data: 40/10/10 videos in" in out
    row = re.search(r"^packed cache +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) ", out, re.M)
    assert row, out[-2000:]
    s1, s2, s3, total = map(float, row.groups())
    assert min(s1, s2, s3) > 0 and abs(s1 + s2 + s3 - total) < 0.15
    for st in ("stage1", "stage2", "stage3"):
        line = re.search(rf"packed cache +{st}: wall ([\d.]+) \| start-up ([\d.]+), (.*)$", out, re.M)
        assert line, st
        assert float(line[2]) < float(line[1])  # start-up is part of the measured wall-clock
        assert "load " in line[3] and "total " in line[3], line[3]
    assert "target:" not in out  # the verdict is only printed at LLP scale with the recipe's epochs
    assert "stage 3 tail:" in out and "Segment-level" in out


def test_pipeline_tabulates_each_method_and_reuses_finished_runs(tiny_llp, tmp_path):
    args = ["--seeds", 1, "--data_dir", tiny_llp.data, "--feats_dir", tiny_llp.feats, "--workdir", tmp_path / "w",
            "--epochs", 1, "--device", "cpu", "--runs", "stage3", "oracle", "--out", tmp_path / "res" / "pipeline"]
    out = bench("pipeline.py", *args)
    assert "seed 1: done in" in out
    md = (tmp_path / "res" / "pipeline.md").read_text()
    assert md.startswith(f"Synthetic LLP set in {tiny_llp.data} (32 train videos), test split; mean +- std over "
                         "seeds [1]; 1 epochs")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "stage1", "stage3", "oracle"}  # HAN was not asked for
    res = json.loads((tmp_path / "res" / "pipeline.json").read_text())
    for name in ("stage1", "stage3", "oracle"):
        (run,) = res["runs"][name]
        want = json.loads((tmp_path / "w" / "seed1" / name / "test_metrics.json").read_text())
        assert all(run[k] == want[k] for k in KEYS)
        assert res["summary"][name]["seg_type"] == [want["seg_type"], 0.0]  # one seed: std 0
        assert f"{want['seg_type']:.1f} +- 0.0" in rows[name]
    meta = json.loads((tmp_path / "w" / "seed1" / "stage2" / "estimate_meta.json").read_text())
    assert res["quality"]["1"] == meta["quality"]
    q = meta["quality"]["visual"]
    assert f"dropped visual labels: seed 1: {q['dropped']} dropped" in md
    # a second call finds every run done and runs nothing again
    again = bench("pipeline.py", *args)
    assert "seed 1: every run already done" in again and "wall-clock per seed" not in again
    assert json.loads((tmp_path / "res" / "pipeline.json").read_text())["runs"] == res["runs"]


def test_estimators_runs_seeds_side_by_side_and_tabulates_each_row(tiny_llp, tmp_path):
    out = bench("estimators.py", "--seeds", 1, 2, "--jobs", 2, "--data_dir", tiny_llp.data, "--feats_dir",
                tiny_llp.feats, "--workdir", tmp_path / "w", "--epochs", 1, "--device", "cpu",
                "--rows", "released", "robust", "--per_class", "--out", tmp_path / "res" / "est", timeout=600)
    assert "seed 1: " in out and "seed 2: " in out
    res = json.loads((tmp_path / "res" / "est.json").read_text())
    assert res["threads"] == 1 and list(res["scores"]) == ["stage1", "released", "robust"]
    # only the calibrated rule ranks its drops (P(absent)); the released threshold rule has no such row
    assert list(res["visual_precision_at_recall_0.7"]) == ["robust"] and "precision at recall 0.7: robust" in out
    for s in (1, 2):
        w = tmp_path / "w" / f"seed{s}"
        # one stage-1 run per seed: the released stage 2 reads its base model, robust its fold models
        assert (w / "stage1" / "fold2of2" / "MMIL_Net.pt").is_file()
        meta = json.loads((w / "stage2_robust" / "estimate_meta.json").read_text())
        assert meta["args"]["estimator"] == "calibrated" and len(meta["fold_checkpoints"]) == 2
        assert "--threads 1" in (w / "log.txt").read_text()
        got = json.loads((w / "stage3_robust" / "test_metrics.json").read_text())
        assert res["scores"]["robust"][s - 1]["seg_v"] == got["seg_v"]
    md = (tmp_path / "res" / "est.md").read_text()
    tables = md.split("\n\n| ")
    assert "every stage on one CPU thread" in md and tables[1].count("\n| ") == 3  # header and three rows
    # --per_class: each row's parse of the test split, classes ordered by their visible test segments
    per_class = res["visual_f_per_class"]
    assert list(per_class) == ["stage1", "released", "robust"]
    test = llp.read_weak(tiny_llp.data / llp.WEAK_FILES["test"])
    visible = llp.read_dense_matrix(tiny_llp.data / llp.EVAL_FILES["visual"], test.filenames).sum(axis=(0, 2))
    order = [llp.CLASSES[c] for c in np.argsort(-visible, kind="stable") if visible[c]]
    assert list(per_class["robust"]) == order and len(order) > 3
    for s in (1, 2):
        f = pd.read_csv(tmp_path / "w" / f"seed{s}" / "stage3_robust" / "parse_test" / "per_class_f.csv", sep="\t",
                        index_col="class")["f_v"]
        assert [per_class["robust"][c][s - 1] for c in order] == f[order].tolist()
    top = order[0]
    f = per_class["released"][top]
    assert f"| {top} | {int(visible.max())} | " in tables[2] and f"{np.mean(f):.1f} +- {np.std(f):.1f}" in tables[2]
    # the drop table: robust's per-class visual precision / recall, means over the two seeds
    q = [json.loads((tmp_path / "w" / f"seed{s}" / "stage2_robust" / "estimate_meta.json").read_text())
         ["quality"]["visual"]["per_class"] for s in (1, 2)]
    cls = next(c for c in order if all(c in x for x in q) and all(x[c]["dropped"] for x in q))  # dropped in both
    line = next(x for x in tables[3].splitlines() if x.startswith(f"| {cls} | {q[0][cls]['truly_absent']} |"))
    want = [np.mean([x[cls][m] for x in q]) for m in ("precision", "recall")]
    assert line.endswith(f"| {want[0]:.3f} / {want[1]:.3f} |"), line


def test_estimators_precision_at_recall_ranks_visual_drops_by_p_absent(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from estimators import precision_at_recall
    names = [f"vid{i}xxxxxx_0_10" for i in range(4)]
    (tmp_path / "AVVP_train.csv").write_text("filename\tevent_labels\n" + "".join(f"{n}\tSpeech\n" for n in names))
    for kind in ("audio", "visual"):  # Speech audible in all four, visible in the first two only
        rows = names if kind == "audio" else names[:2]
        (tmp_path / f"synthetic_train_eval_{kind}.csv").write_text(
            "filename\tonset\toffset\tevent_labels\n" + "".join(f"{n}\t0\t10\tSpeech\n" for n in rows))
    drops = tmp_path / "dropped_labels.csv"
    # ranked: vid2 (right), vid0 (wrong: it is visible), vid3 (right); the audio drop is not counted
    drops.write_text("filename\tevent_label\tdropped\tp_absent\n" + f"{names[0]}\tSpeech\tvisual\t0.8\n"
                     f"{names[3]}\tSpeech\tvisual\t0.7\n{names[1]}\tSpeech\taudio\t0.95\n{names[2]}\tSpeech\tvisual\t0.9\n")
    assert precision_at_recall(tmp_path, drops, recall=0.5) == 1.0   # one of the two invisible labels: vid2
    assert precision_at_recall(tmp_path, drops, recall=0.7) == 2 / 3  # both need the first three
    drops.write_text("filename\tevent_label\tdropped\tp_absent\n" + f"{names[2]}\tSpeech\tvisual\t0.9\n")
    assert math.isnan(precision_at_recall(tmp_path, drops, recall=0.7))  # vid2 alone holds half of them
    drops.write_text("filename\tevent_label\tdropped\tthreshold\n" + f"{names[2]}\tSpeech\tvisual\t0.1\n")
    assert precision_at_recall(tmp_path, drops) is None  # the threshold rule ranks nothing
