"""Which modality-aware labels? Stage-2 estimators scored against truth, and stage 3 trained on each.

    python benchmarks/estimators.py [--seeds 1 2 3] [--data_dir data --feats_dir feats] [--workdir runs/estimators]
                                    [--rows released robust oracle] [--jobs 2]

On a synthetic set (made first if absent; its train truth scores the drops), for every seed:
stage 1 once with --folds 2 (the base model, which the released stage 2 reads, plus two models each
trained on half the train videos), then each estimator's labels, stage 3 retrained on them:
  released     stage 2 as released (one partner per video, thresholds scaled by class error)
  partners8    --partners 8: the swapped probabilities averaged over 8 partners
  folds2       --folds 2: every train video read by a stage-1 model trained on the other half
               of the train split (cross-fitting)
  folds2_partners8  --folds 2 --partners 8
  calibrated   --folds 2 --estimator calibrated: drop where P(absent | swap evidence) > 0.5, that
               probability fit on the val split's dense truth
  robust       --recipe robust in stages 2 and 3: stage 2 --folds 2 --partners 8 --estimator calibrated,
               stage 3 --no-quirk_video_target
  robust_stage2  robust's labels, stage 3 as released
  robust_reestimated  robust's stage 2 run again on robust's stage-3 fold models (stage 3 --recipe robust
               trains them: --folds 2), then stage 3 --recipe robust on those labels
  reestimate   the released rule on the released stage-3 model instead of the stage-1 model
  denoise      stage 3 --denoise joint --no-quirk_video_target on released's labels: the weak labels,
               with per-class shares of drops from stage 2 and the labels to drop chosen by stage 3's
               own losses (its drops are scored as stage 3 writes them after the last epoch)
  oracle       the TRUE modality labels (an upper bound: what perfect drops would give)
  no_drop      every weak label kept (stage 3 on the weak labels alone)
Prints one row per estimator: precision / recall / F1 of the dropped audio and visual labels and
stage 3's test segment A, V, AV, Type@AV and event Type@AV, mean +- std over seeds, and for the
rules that rank their drops by P(absent) (--estimator calibrated) the visual precision at recall 0.7; writes
--out .md and .json. A run whose output exists is not run again. --rows runs only the rows named
(and what they read: reestimate needs released's stage 3, robust_reestimated robust's, a stage-3 option its
estimator's labels).
--per_class adds, for every class visible in the test split, each row's segment visual F (its
model's --mode parse on the test split, in <run>/parse_test/) and each estimator's visual drop
precision / recall: which classes a row gains or loses on.
--jobs N runs N seeds at once, every stage on one CPU thread (on 2 cores, 2 jobs finish about 2.5x
sooner than one job on 2 threads; one thread rounds float sums in another order, so the figures
are another draw of the same runs).
"""
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from avvp import llp, synth  # noqa: E402
from avvp.report import drop_quality  # noqa: E402
from avvp.config import path_args  # noqa: E402
from avvp.config import number  # noqa: E402
from avvp.errors import cli  # noqa: E402
from pipeline import bench_parser, check_synthetic, oracle_csv, shown, stage, train_presence, truth_flags  # noqa: E402

STAGE3_KEYS = {"seg_a": "seg A", "seg_v": "seg V", "seg_av": "seg AV", "seg_type": "seg Type@AV",
               "evt_type": "evt Type@AV"}
# one stage-1 run per seed (= stage 1 --recipe robust): its base model is stage 1 as released, its
# fold models (fold<k>of2/) are what --folds 2 reads
STAGE1_FLAGS, STAGE1_DONE = ["--folds", "2"], "fold2of2/test_metrics.json"
# stage-3 flags of an estimator's own stage-3 run (the others: stage 3 as released); robust's
# trains the fold models that robust_reestimated reads, robust_reestimated's needs none
STAGE3_FLAGS = {"robust": ["--recipe", "robust"], "robust_reestimated": ["--recipe", "robust", "--folds", "1"]}
STAGE3_DONE = {"robust": "fold2of2/test_metrics.json"}
# estimator -> (stage-2 flags, the model stage 2 reads: a run name under the seed's folder)
ESTIMATORS = {"released": ([], "stage1"), "partners8": (["--partners", "8"], "stage1"),
              "folds2": (["--folds", "2"], "stage1"),
              "folds2_partners8": (["--folds", "2", "--partners", "8"], "stage1"),
              "calibrated": (["--folds", "2", "--estimator", "calibrated"], "stage1"),
              "robust": (["--recipe", "robust"], "stage1"),
              "reestimate": ([], "stage3_released"),
              "robust_reestimated": (["--recipe", "robust"], "stage3_robust")}
# stage-3 options: row -> (stage-3 flags, the estimator whose stage-2 labels it reads)
STAGE3_OPTIONS = {"robust_stage2": ([], "robust"),
                  "denoise": (["--denoise", "joint", "--no-quirk_video_target"], "released")}
RECALL = 0.7  # visual drops: the precision reached at this recall is printed (rules ranked by P(absent))
FIXED = ("oracle", "no_drop")  # rows whose labels are written here: the true modality labels, the weak labels


def csv_quality(data, path):
    """Drop precision / recall / F1 of a modality-aware label CSV against the synthetic train truth."""
    names, weak, audio, visual = llp.read_modality_labels(path)
    truth = train_presence(data, names)
    y = weak > 0
    return {"audio": drop_quality(y & (audio == 0), weak, truth[0], per_class=False),
            "visual": drop_quality(y & (visual == 0), weak, truth[1], per_class=False)}


def precision_at_recall(data, path, recall=RECALL):
    """The visual drops of a calibrated run ranked by P(absent) (its dropped_labels.csv): the
    precision of the fewest top-ranked drops that hold `recall` of the truly invisible weak labels
    (NaN where all its drops hold less); None for a rule without P(absent)."""
    d = pd.read_csv(path, sep="\t")
    if "p_absent" not in d:
        return None
    train = llp.read_weak(data / llp.WEAK_FILES["train"])
    absent = (train.labels > 0) & ~train_presence(data, train.filenames)[1]  # (N, 25) truly invisible
    row = {f: i for i, f in enumerate(train.filenames)}
    d = d[d.dropped == "visual"]
    right = np.array([absent[row[f], llp.CLASS_INDEX[c]] for f, c in zip(d.filename, d.event_label)], dtype=bool)
    if not right.any():
        return float("nan")
    precision, rec, _ = precision_recall_curve(right, d.p_absent)   # recall among the drops, falling
    rec = rec * right.sum() / absent.sum()                           # recall among all truly invisible labels
    reached = np.flatnonzero(rec[:-1] >= recall)                     # [-1]: the (1, 0) end point of no drop
    return float(precision[reached[-1]]) if reached.size else float("nan")


def per_class_lines(data, work, seeds, names, quality):
    """The --per_class tables: per class visible in the test split (most visible segments first),
    each row's segment visual F of parse mode, mean +- std over seeds; then each estimator's visual
    drop precision / recall per class, means over seeds. Returns (lines, {row: {class: [F per seed]}})."""
    test = llp.read_weak(data / llp.WEAK_FILES["test"])
    visible = llp.read_dense_matrix(data / llp.EVAL_FILES["visual"], test.filenames, warn=False).sum(axis=(0, 2))
    order = [llp.CLASSES[c] for c in np.argsort(-visible, kind="stable") if visible[c]]
    f = {n: pd.concat([pd.read_csv(work / f"seed{s}" / run_name(n) / "parse_test" / "per_class_f.csv", sep="\t",
                                   index_col="class")["f_v"] for s in seeds], axis=1) for n in names}
    head = ["class", "visible test segments", *names]
    lines = ["", "Segment visual F per class (test split, mean +- std over seeds):", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for cls in order:
        cells = [f"{f[n].loc[cls].mean():.1f} +- {f[n].loc[cls].std(ddof=0):.1f}" for n in names]
        lines.append("| " + " | ".join([cls, str(int(visible[llp.CLASS_INDEX[cls]])), *cells]) + " |")
    ranked = [n for n in names if n in quality and all("per_class" in q["visual"] for q in quality[n])]
    if ranked:
        head = ["class", "truly invisible weak labels", *ranked]
        lines += ["", "Visual drops per class, precision / recall against the train truth (mean over seeds):", "",
                  "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for cls in order:
            per = {n: [q["visual"]["per_class"].get(cls) for q in quality[n]] for n in ranked}
            first = per[ranked[0]][0]
            if first is None:  # no weak train label of this class
                continue
            cells = [" / ".join(mean_std([c[m] for c in per[n]], std=False) for m in ("precision", "recall")) for n in ranked]
            lines.append("| " + " | ".join([cls, str(first["truly_absent"]), *cells]) + " |")
    return lines, {n: {cls: f[n].loc[cls].tolist() for cls in order} for n in names}


def run_name(row):
    """The folder of a row's model in a seed's folder: stage 1's, or the row's stage-3 run."""
    return "stage1" if row == "stage1" else f"stage3_{row}"


def no_drop_csv(data, path):
    train = llp.read_weak(data / llp.WEAK_FILES["train"])
    y = train.labels > 0
    llp.write_modality_labels(path, train.filenames, y, y, y)


def mean_std(values, std=True):
    v = [x for x in values if x == x]  # NaN (nothing dropped) left out
    return (f"{np.mean(v):.3f}" + (f" +- {np.std(v):.3f}" if std else "")) if v else "n/a"


@cli
def main():
    p = bench_parser(__doc__, "estimators")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "estimators"))
    p.add_argument("--rows", nargs="+", choices=[*ESTIMATORS, *STAGE3_OPTIONS, *FIXED], metavar="ROW",
                   help="run and print only these rows (default: all); stage1 is always printed")
    p.add_argument("--jobs", type=number(1, kind=int), default=1,
                   help="seeds run at once (> 1: every stage on one CPU thread)")
    p.add_argument("--per_class", action="store_true",
                   help="also tabulate each row's segment visual F and visual drops per class (parse mode on the test split)")
    a = p.parse_args()
    data, feats, work = Path(a.data_dir), Path(a.feats_dir), Path(a.workdir)
    check_synthetic(data)
    if not (data / llp.WEAK_FILES["train"]).is_file():
        synth.generate(data, feats)
    work.mkdir(parents=True, exist_ok=True)
    rows = [r for r in (*ESTIMATORS, *STAGE3_OPTIONS, *FIXED) if a.rows is None or r in a.rows]
    # a row runs what it reads: reestimate released's stage 3, a stage-3 option its estimator's stage 2
    needed = set(rows) | {STAGE3_OPTIONS[r][1] for r in rows if r in STAGE3_OPTIONS}
    if "reestimate" in rows:
        needed.add("released")
    if "robust_reestimated" in rows:
        needed.add("robust")
    estimators = {k: v for k, v in ESTIMATORS.items() if k in needed}
    stage3_options = {k: v for k, v in STAGE3_OPTIONS.items() if k in rows}
    fixed = {k: work / f"{k}_labels.csv" for k in FIXED if k in rows}
    oracle_csv(data, work / "oracle_labels.csv")
    no_drop_csv(data, work / "no_drop_labels.csv")
    truth = truth_flags(data)
    threads = ["--threads", "1"] if a.jobs > 1 else []

    def run_seed(s):
        """Every run of one seed, in the order they read each other; its own log file."""
        w = work / f"seed{s}"
        common = [*path_args(data, feats), "--no_progress", "--device", a.device, "--seed", str(s), *threads]
        train = ["--epochs", str(a.epochs)]
        t0 = time.perf_counter()
        w.mkdir(parents=True, exist_ok=True)
        with open(w / "log.txt", "a") as log:
            stage("step1_train_base_model", ["--mode", "train", *common, *train, *STAGE1_FLAGS, "--model_save_dir",
                                             f"{w}/stage1"], log, w / "stage1" / STAGE1_DONE)
            for name, (flags, source) in estimators.items():  # the re-estimates come after the stage 3 they read
                stage("step2_find_exchange", ["--mode", "estimate_labels", *common, *flags, *truth,
                                              "--model_save_dir", f"{w}/{source}", "--output_dir", f"{w}/stage2_{name}"],
                      log, w / f"stage2_{name}" / "estimate_meta.json")
                stage("step3_retrain", ["--mode", "retrain", *common, *train, *STAGE3_FLAGS.get(name, []),
                                        "--model_save_dir", f"{w}/stage3_{name}",
                                        "--label_ma", f"{w}/stage2_{name}/modality_aware_labels.csv"],
                      log, w / f"stage3_{name}" / STAGE3_DONE.get(name, "test_metrics.json"))
            for name, (flags, source) in stage3_options.items():
                stage("step3_retrain", ["--mode", "retrain", *common, *train, *flags, "--model_save_dir",
                                        f"{w}/stage3_{name}", "--label_ma",
                                        f"{w}/stage2_{source}/modality_aware_labels.csv"],
                      log, w / f"stage3_{name}" / "test_metrics.json")
            for name, csv in fixed.items():
                stage("step3_retrain", ["--mode", "retrain", *common, *train, "--model_save_dir", f"{w}/stage3_{name}",
                                        "--label_ma", str(csv)], log, w / f"stage3_{name}" / "test_metrics.json")
            if a.per_class:  # each row's model parses the test split: its per_class_f.csv
                for name in ["stage1", *rows]:
                    out = w / run_name(name) / "parse_test"
                    stage("step1_train_base_model" if name == "stage1" else "step3_retrain",
                          ["--mode", "parse", *common, "--model_save_dir", str(w / run_name(name)), "--parse_out",
                           str(out)], log, out / "per_class_f.csv")
        print(f"seed {s}: {time.perf_counter() - t0:.0f}s", flush=True)

    with ThreadPoolExecutor(a.jobs) as pool:  # each seed's runs go one after another, seeds side by side
        list(pool.map(run_seed, a.seeds))
    quality = {r: [] for r in [*estimators, *stage3_options]}  # per seed: the drops' quality
    ranked = {r: [] for r in estimators}  # per seed: visual precision at RECALL, None without P(absent)
    scores = {r: [] for r in ["stage1", *rows]}
    for s in a.seeds:
        w = work / f"seed{s}"
        for name in scores:
            scores[name].append(json.loads((w / run_name(name) / "test_metrics.json").read_text()))
        for name in quality:  # a stage-3 option trains on its estimator's labels, unless it denoises them itself
            if name in ranked:
                ranked[name].append(precision_at_recall(data, w / f"stage2_{name}" / "dropped_labels.csv"))
            if name in ESTIMATORS or "--denoise" not in STAGE3_OPTIONS[name][0]:
                source = name if name in ESTIMATORS else STAGE3_OPTIONS[name][1]
                quality[name].append(json.loads((w / f"stage2_{source}" / "estimate_meta.json").read_text())["quality"])
            else:
                quality[name].append(csv_quality(data, w / f"stage3_{name}" / "denoised_labels.csv"))

    head = ["estimator", "drop A P", "drop A R", "drop A F1", "drop V P", "drop V R", "drop V F1",
            *STAGE3_KEYS.values()]
    lines = [f"Synthetic set {shown(data)}, test split; mean +- std over seeds {a.seeds}; stage-2 drops scored against the "
             "train truth; the metrics are stage 3's (stage1: the base model)"
             + ("; every stage on one CPU thread." if threads else "."), "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, runs in scores.items():
        q = quality.get(name)
        drops = [mean_std([x[kind][m] for x in q]) if q else "" for kind in ("audio", "visual")
                 for m in ("precision", "recall", "f1")]
        metrics = [f"{np.mean([r[k] for r in runs]):.1f} +- {np.std([r[k] for r in runs]):.1f}" for k in STAGE3_KEYS]
        lines.append("| " + " | ".join([name, *drops, *metrics]) + " |")
    base = quality[next(iter(estimators))][0] if estimators else None
    if base:
        lines += ["", f"base rates (share of weak labels truly absent): audio {base['audio']['base_rate']:.3f}, "
                  f"visual {base['visual']['base_rate']:.3f}"]
    ranked = {name: p for name, p in ranked.items() if None not in p}
    if ranked:
        parts = []
        for name, p in ranked.items():  # mean_std leaves NaN out: say on how many seeds the recall was not reached
            missed = int(np.isnan(p).sum())
            parts.append(f"{name} {mean_std(p)}" + (f" (not reached on {missed} of {len(p)} seeds)" if missed else ""))
        lines += [f"visual drops ranked by P(absent), precision at recall {RECALL}: " + ", ".join(parts)]
    per_class = None
    if a.per_class:
        more, per_class = per_class_lines(data, work, a.seeds, list(scores), quality)
        lines += more
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"seeds": a.seeds, "data": shown(data), "threads": 1 if threads else
                                                    "default", "scores": scores, "quality": quality,
                                                    f"visual_precision_at_recall_{RECALL}": ranked,
                                                    **({"visual_f_per_class": per_class} if per_class else {})},
                                                   indent=1))


if __name__ == "__main__":
    main()
