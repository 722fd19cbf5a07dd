"""Use a trained model: parse videos into LLP event tables, score them when truth is known, draw them.

Shared by the stages' `--mode parse`. Input is either a weak label file (default the test split)
or, with --parse_dir, every video that has a feature file in all three feature folders (no labels
needed; a video's id is then its feature files' stem, as it is). Output folder (--parse_out):

    pred_audio.csv, pred_visual.csv   predicted events in the LLP eval format (tab-separated:
                                      filename, onset, offset, event_labels; one row per
                                      contiguous run of segments, offset exclusive)
    video_probs.csv                   per video and class: video_prob, audio_prob, visual_prob
    per_class_f.csv, metrics.json     only with dense truth: pooled per-class segment F and the
                                      10 LLP scores (also printed as the LLP table)
    index.html                        the page to look at (avvp/page.py): per video its timelines,
                                      probabilities and, when avvp.extract recorded its source in
                                      the feature folder's manifest.csv, the video itself
    timeline_*.png, per_class_f.png   with --plot N (needs matplotlib)

The pred files score with `python -m avvp.evaluate --label ... --pred_audio pred_audio.csv ...`
to exactly the numbers of metrics.json.
"""
import os
import sys

import numpy as np
import pandas as pd

from . import features, llp, page
from . import evaluate as llp_eval
from .data import load_split, read_eval_truth
from .errors import AVVPError
from .files import atomic_path, ensure_writable_dir
from .predict import predict, write_metrics

PRED_FILES = {"audio": "pred_audio.csv", "visual": "pred_visual.csv"}
PROBS_FILE = "video_probs.csv"
PER_CLASS_FILE = "per_class_f.csv"
METRICS_FILE = "metrics.json"
MATPLOTLIB_HINT = "--plot needs matplotlib, which is not installed: pip install matplotlib"


def add_parse_args(p):
    """The --mode parse flags every stage shares."""
    g = p.add_argument_group("parse (--mode parse)")
    g.add_argument("--parse_out", default="outputs/parse/",
                   help="folder for pred_audio.csv, pred_visual.csv, video_probs.csv, per_class_f.csv, "
                        "metrics.json and the pictures")
    g.add_argument("--parse_label", default=None,
                   help="weak label file of the videos to parse (default: --label_test); scored against "
                        "--eval_audio/--eval_visual when those name its videos")
    g.add_argument("--parse_dir", nargs="?", const="", default=None, metavar="DIR",
                   help="parse unlabelled videos instead of a label file: every video id with a .npy in all "
                        "three of DIR/vggish, DIR/res152, DIR/r2plus1d_18 (bare --parse_dir: in "
                        "--audio_dir, --video_dir, --st_dir)")
    g.add_argument("--plot", type=int, default=0, metavar="N",
                   help="also draw PNG timelines of the first N videos (and, with truth, a per-class F chart)")
    return p


# ----------------------------------------------------------------------------- input

def parse_dirs(parse_dir, default_dirs):
    """The feature folders of --parse_dir DIR: DIR/<vggish|res152|r2plus1d_18>; bare --parse_dir ("")
    keeps the stage's own (--audio_dir, --video_dir, --st_dir)."""
    return features.modality_dirs(parse_dir) if parse_dir else dict(default_dirs)


def video_ids(dirs):
    """Sorted ids (file name stems) with a .npy file in every folder of `dirs`; warns of the ids
    found only in some, and of names a tab-separated table cannot hold (left out)."""
    sets = {}
    for key, folder in dirs.items():
        if not os.path.isdir(folder):
            raise AVVPError(f"{folder}: feature folder not found ({features.MODALITIES[key][0]} features)")
        with os.scandir(folder) as it:
            sets[key] = {e.name[:-4] for e in it if e.name.endswith(".npy") and e.is_file()}
    common = set.intersection(*sets.values())
    partial = sorted(set.union(*sets.values()) - common)
    odd = sorted(i for i in common if any(c in i for c in "\t\n\r"))
    common -= set(odd)
    if odd:
        print(f"warning: parse: leaving out {len(odd)} feature file(s) whose name holds a tab or line break: "
              f"{', '.join(map(repr, odd[:5]))}", file=sys.stderr)
    if not common:
        raise AVVPError(f"no video has a .npy file in all of {', '.join(dirs.values())}")
    if partial:
        print(f"warning: parse: skipping {len(partial)} video id(s) lacking a feature file in some of "
              f"{', '.join(dirs.values())}: {', '.join(partial[:5])}{' ...' if len(partial) > 5 else ''}",
              file=sys.stderr)
    return sorted(common)


def video_sources(audio_dir):
    """{id: source video path} from the manifest.csv that avvp.extract writes at the feature
    root (the folder above vggish/); {} without one. Failed or vanished sources are left out."""
    root = os.path.dirname(os.path.normpath(audio_dir))
    out = {}
    try:
        rows = features.read_manifest(root)
    except AVVPError as e:  # the page then goes without players; the parse itself is right
        print(f"warning: {e}; the page shows no videos", file=sys.stderr)
        rows = []
    for row in rows:
        path = os.path.join(root, row["source"])
        if row["status"] == "done" and os.path.isfile(path):
            out[row["id"]] = path
    return out


def attach_truth(split, eval_audio, eval_visual):
    """Attach dense truth from the eval files when they name the split's videos.

    Each eval file is read once. Returns how many videos of the split they name (0 when a file is absent).
    """
    if not (os.path.isfile(eval_audio) and os.path.isfile(eval_visual)):
        return 0
    events = read_eval_truth(eval_audio, eval_visual)
    covered, _ = llp.truth_coverage(events, split.filenames)
    if covered:
        split.gt_a, split.gt_v = (llp.dense_matrix(e, split.filenames) for e in events)
    return covered


def load_input(source, parse_dir, label, eval_audio, eval_visual, device):
    """(the Split to parse, {id: source video}): every video of the feature folders of --parse_dir
    (parse_dir: DIR holding vggish/, res152/, r2plus1d_18/, or "" for source's folders), or the
    videos of a label file with dense truth attached when the eval files name them."""
    if parse_dir is not None:
        dirs = parse_dirs(parse_dir, source.dirs)
        ids = video_ids(dirs)
        split = load_split(source._replace(dirs=dirs), f"--parse_dir {' '.join(dirs.values())}", device,
                           name="parse", filenames=ids)
        return split, video_sources(dirs["audio"])
    split = load_split(source, label, device, name="parse")  # reads and checks the label file first
    covered, n = attach_truth(split, eval_audio, eval_visual), len(split)
    if covered == 0:
        print(f"note: {eval_audio} / {eval_visual} name no video of {label}: parsing without scoring")
    elif covered < n:
        print(f"warning: {n - covered} of {n} videos of {label} have no row in "
              f"{eval_audio} or {eval_visual}; scored as having no event", file=sys.stderr)
    return split, video_sources(source.dirs["audio"])


# ----------------------------------------------------------------------------- tables

def event_tables(pred_a, pred_v, filenames):
    """(N, 25, 10) 0/1 audio and visual predictions -> dict audio/visual -> eval-format DataFrame."""
    return {"audio": llp.events_table(pred_a, filenames), "visual": llp.events_table(pred_v, filenames)}


def probs_table(probs, filenames):
    """Long table, one row per (video, class): video_prob, audio_prob, visual_prob (N * 25 rows)."""
    n, c = probs["video_prob"].shape                 # (N, 25)
    cols = {"filename": np.repeat(np.asarray(filenames, dtype=object), c),
            "class": np.tile(np.asarray(llp.CLASSES, dtype=object), n)}
    for key in ("video_prob", "audio_prob", "visual_prob"):
        cols[key] = np.round(probs[key].reshape(-1).astype(np.float64), 6)
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------- the whole run

def check_request(plot, parse_dir, parse_label, parse_out):
    """The parse flags' one-line errors, before any loading."""
    if plot < 0:
        raise AVVPError(f"--plot {plot}: expected a number of videos >= 0")
    if parse_dir is not None and parse_label:
        raise AVVPError("--parse_dir and --parse_label exclude each other (a folder of features, or a label file)")
    if plot:
        require_matplotlib()                          # fail before minutes of loading, not after
    ensure_writable_dir(parse_out, "--parse_out folder")


def run(model, split, out_dir, plot=0, batch_size=256, title="", extra=None, sources=None):
    """--mode parse: a loaded model over a split -> files in out_dir, the page (and pictures).

    title: what the printed table is of; extra: more metrics.json entries (stage, checkpoint, epoch);
    sources: {id: video file} for the page's players.
    Returns a dict: filenames, probs (predict's), pred_a / pred_v (N, 25, 10) uint8, tables,
    metrics and per_class (None without truth), paths written.
    """
    probs = predict(model, split, batch_size)      # (N, 25) probs, frame_prob (N, 10, 2, 25)
    res = write_outputs(out_dir, split, probs, extra=extra)
    if res["metrics"] is not None:
        print(llp_eval.format_table(res["metrics"], title=f"{title}: {split.path} ({len(split)} videos)"))
        print(format_per_class(res["per_class"]))
    data = page.page_data(split, probs, res["pred_a"], res["pred_v"], res["metrics"], res["per_class"], sources,
                          out_dir, title)
    res["paths"].append(page.write_page(out_dir, data))
    if plot:
        res["paths"] += plot_all(out_dir, split, probs, res["pred_a"], res["pred_v"], res["per_class"], plot)
    na, nv = (len(res["tables"][k]) for k in ("audio", "visual"))
    for kind, count in (("audio", na), ("visual", nv)):
        if count == 0:
            print(f"note: no {kind} event predicted: {PRED_FILES[kind]} holds only its header")
    print(f"parsed {len(split)} videos: {na} audio and {nv} visual events; wrote {len(res['paths'])} files "
          f"to {out_dir}")
    print(f"page: {os.path.join(out_dir, page.PAGE_FILE)}")
    return res


def write_outputs(out_dir, split, probs, extra=None):
    """Threshold, tabulate and write; score against split.gt_a / gt_v when present."""
    bad = ~np.isfinite(probs["frame_prob"]).all((1, 2, 3))                # (N,)
    if bad.any():
        raise AVVPError(f"the model's probabilities are NaN for {int(bad.sum())} video(s) (first: "
                        f"{split.filenames[int(np.flatnonzero(bad)[0])]}); nothing written")
    pred_a, pred_v = llp_eval.predict_segments(probs["frame_prob"], probs["audio_prob"], probs["visual_prob"])
    tables = event_tables(pred_a, pred_v, split.filenames)
    paths = []
    for kind, name in PRED_FILES.items():
        paths.append(os.path.join(out_dir, name))
        llp.write_tsv(tables[kind], paths[-1])
    paths.append(os.path.join(out_dir, PROBS_FILE))
    llp.write_tsv(probs_table(probs, split.filenames), paths[-1])
    metrics = per_class = None
    if split.gt_a is not None:
        metrics = llp_eval.llp_scores(pred_a, pred_v, split.gt_a, split.gt_v)
        per_class = llp_eval.per_class_segment_f(pred_a, pred_v, split.gt_a, split.gt_v)
        paths.append(os.path.join(out_dir, PER_CLASS_FILE))
        llp.write_tsv(per_class.round(4).reset_index(), paths[-1])
        paths.append(os.path.join(out_dir, METRICS_FILE))
        write_metrics(paths[-1], metrics, dict(extra or {}, label=split.path, videos=len(split)))
    else:  # an earlier scored parse into this folder must not leave its scores beside these predictions
        for name in (PER_CLASS_FILE, METRICS_FILE):
            if os.path.isfile(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
                print(f"note: removed {os.path.join(out_dir, name)} of an earlier parse (these videos have no truth)")
    return {"filenames": split.filenames, "probs": probs, "pred_a": pred_a, "pred_v": pred_v, "tables": tables,
            "metrics": metrics, "per_class": per_class, "paths": paths}


def format_per_class(per_class):
    """Per-class segment F (percent, pooled over videos) as text; '-' where a class never occurs."""
    lines = [f"{'per-class segment F':24s}  {'Audio':>7s}  {'Visual':>7s}  {'Audio-Visual':>12s}"]
    for name, row in per_class.iterrows():
        cells = ["-" if np.isnan(x) else f"{x:.2f}" for x in (row["f_a"], row["f_v"], row["f_av"])]
        lines.append(f"{name:24s}  {cells[0]:>7s}  {cells[1]:>7s}  {cells[2]:>12s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pictures

def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a one-line AVVPError naming the fix."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AVVPError(MATPLOTLIB_HINT) from None
    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_all(out_dir, split, probs, pred_a, pred_v, per_class, n):
    """Timelines of the first n videos, and the per-class F chart when truth is known; returns paths."""
    plt = require_matplotlib()
    paths = []
    for i in range(min(n, len(split))):
        path = os.path.join(out_dir, f"timeline_{i + 1:02d}_{split.filenames[i]}.png")
        fig = timeline_figure(plt, split.filenames[i], probs, i, pred_a[i], pred_v[i],
                              None if split.gt_a is None else split.gt_a[i],
                              None if split.gt_v is None else split.gt_v[i],
                              None if split.labels is None else split.labels[i])
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    if per_class is not None:
        path = os.path.join(out_dir, "per_class_f.png")
        fig = per_class_figure(plt, per_class)
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


COLORS = {"audio": ("#cfe3f5", "#1f5f99"), "visual": ("#fbe0c3", "#b35806")}   # (truth, prediction)


def timeline_figure(plt, filename, probs, i, pa, pv, ga=None, gv=None, weak=None):
    """One video: an audio and a visual row per relevant class; truth as a pale band, prediction as
    a dark bar inside it; segment probabilities as a grey area (row height = 1); 10 segments on x.

    pa, pv, ga, gv: (25, 10) 0/1; weak: (25,) 0/1 or None.
    """
    from matplotlib.patches import Patch

    relevant = pa.any(1) | pv.any(1)                                   # (25,)
    for x in (ga, gv):
        if x is not None:
            relevant |= x.any(1)
    if weak is not None:
        relevant |= np.asarray(weak) > 0
    classes = np.flatnonzero(relevant)
    if classes.size == 0:                                              # nothing anywhere: the 3 likeliest
        classes = np.sort(np.argsort(-probs["video_prob"][i])[:3])
    rows = [(c, kind) for c in classes for kind in ("audio", "visual")]
    t = np.arange(llp.NUM_SEGMENTS)
    fig, ax = plt.subplots(figsize=(9.5, 1.3 + 0.42 * len(rows)))
    for r, (c, kind) in enumerate(rows):
        y = len(rows) - 1 - r                                          # first class on top
        m = 0 if kind == "audio" else 1
        pale, dark = COLORS[kind]
        truth = (ga if kind == "audio" else gv)
        if truth is not None:
            spans = [(on, off - on) for on, off in llp.runs(truth[c])]
            ax.broken_barh(spans, (y - 0.42, 0.84), facecolors=pale, edgecolors=dark, linewidth=0.8, zorder=1)
        spans = [(on + 0.04, off - on - 0.08) for on, off in llp.runs((pa if kind == "audio" else pv)[c])]
        ax.broken_barh(spans, (y - 0.17, 0.34), facecolors=dark, zorder=2)
        seg_p = probs["frame_prob"][i, :, m, c]                         # (10,) segment probabilities
        ax.fill_between(np.r_[t, 10], y - 0.42, y - 0.42 + 0.84 * np.r_[seg_p, seg_p[-1]], step="post",
                        color="0.55", alpha=0.3, linewidth=0, zorder=1.5)   # height = prob; 0.5 = bar centre
        vp = probs["audio_prob" if kind == "audio" else "visual_prob"][i, c]
        ax.text(10.15, y, f"{vp:.2f}", va="center", fontsize=8, color=dark)
        if r % 2 == 1 and r < len(rows) - 1:
            ax.axhline(y - 0.5, color="0.6", linewidth=0.8)
    ax.set_yticks(np.arange(len(rows))[::-1])
    ax.set_yticklabels([f"{llp.CLASSES[c]} ({kind})" for c, kind in rows], fontsize=9)
    for (c, kind), lab in zip(rows, ax.get_yticklabels()):
        lab.set_color(COLORS[kind][1])
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xticks(np.arange(11))
    ax.set_xlabel("segment (1 s each)")
    ax.grid(axis="x", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.text(10.15, len(rows) - 0.45, "video\nprob", fontsize=7, va="bottom", color="0.3")
    title = filename
    if ga is not None and gv is not None:
        m = llp_eval.llp_scores(pa[None], pv[None], ga[None], gv[None])
        title += f"   segment F: audio {m['seg_a']:.0f}, visual {m['seg_v']:.0f}, audio-visual {m['seg_av']:.0f}"
    ax.set_title(title, fontsize=10, loc="left")
    handles = [Patch(facecolor=COLORS["audio"][1], label="predicted audio"),
               Patch(facecolor=COLORS["visual"][1], label="predicted visual")]
    if ga is not None:
        handles += [Patch(facecolor=COLORS["audio"][0], edgecolor=COLORS["audio"][1], label="true audio"),
                    Patch(facecolor=COLORS["visual"][0], edgecolor=COLORS["visual"][1], label="true visual")]
    handles.append(Patch(facecolor="0.55", alpha=0.3, label="segment prob (height)"))
    # below the x label: about 0.5 inch, whatever the number of rows
    ax.legend(handles=handles, ncol=len(handles), fontsize=7.5, loc="upper center", frameon=False,
              bbox_to_anchor=(0.5, -0.55 / (0.42 * len(rows))))
    fig.tight_layout()
    return fig


def per_class_figure(plt, per_class):
    """Grouped horizontal bars: segment F of audio, visual and audio-visual per class (25 classes)."""
    n = len(per_class)
    fig, ax = plt.subplots(figsize=(8, 0.36 * n + 1.4))
    y = np.arange(n)[::-1]                                              # first class on top
    kinds = (("f_a", "audio", COLORS["audio"][1]), ("f_v", "visual", COLORS["visual"][1]),
             ("f_av", "audio-visual", "#4d9221"))
    h = 0.27
    for k, (col, label, color) in enumerate(kinds):
        vals = per_class[col].to_numpy()                               # (25,) percent, NaN = never occurs
        yy = y + (1 - k) * h
        ax.barh(yy, np.nan_to_num(vals), height=h, color=color, label=label)
        for yk, v in zip(yy, vals):
            ax.text((0 if np.isnan(v) else v) + 0.8, yk, "n/a" if np.isnan(v) else f"{v:.0f}",
                    va="center", fontsize=7, color="0.3")
    for yk in y[::2]:                                                   # a pale band on every other class
        ax.axhspan(yk - 0.5, yk + 0.5, color="0.95", zorder=0)
    ax.set_yticks(y)
    ax.set_yticklabels(per_class.index, fontsize=8)
    ax.set_xlim(0, 108)
    ax.set_xlabel("segment-level F (%), pooled over videos")
    ax.set_ylim(-0.6, n - 0.4)
    ax.grid(axis="x", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.set_title("per-class segment F", fontsize=10, loc="left")
    fig.tight_layout()
    return fig
