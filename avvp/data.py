"""A split on the device: label file + per-video .npy files -> one tensor per modality.

Features of a split are loaded once and kept on the training device; batches are gathered
there by index: no per-sample file reads, no DataLoader workers.
"""
import os
import sys
import warnings
from collections import namedtuple

import numpy as np
import torch

from . import features, llp
from .errors import AVVPError
from .timing import clock

# what a stage says when a label file is missing: the usual first-run mistake is having no data yet
DATA_HINT = "see data/README.md for LLP's files, or run `python -m avvp.synth` for the synthetic set"
CACHE_MIN_VIDEOS = 5000       # packed caches pay off for LLP-sized data (11,849 videos), not for the demo (2,900)
GPU_RESIDENT_FRACTION = 0.5   # keep a split on the GPU when it takes at most this share of free memory


# where a split's features come from and how they are read: dirs {audio, video, st} -> folder;
# skip_missing: drop videos lacking a file (else an error); cache: --feature_cache auto | on | off;
# progress: tqdm bars; pool_frames: average the 8 res152 frames of each segment while loading
FeatureSource = namedtuple("FeatureSource", "dirs skip_missing cache progress pool_frames")


class Split:
    """One split: filenames, weak labels (N, 25) or None, features, optional dense truth."""

    def __init__(self, filenames, labels, feats, device, gt_a=None, gt_v=None, path=None):
        self.filenames = filenames
        self.labels = labels            # (N, 25) float32 numpy, or None (parse --parse_dir)
        self.feats = feats              # dict audio/video/st -> (N, ...) tensor, on `device` or on the host
        self.device = device            # where the model runs
        self.resident = feats["audio"].device.type == device.type  # False: batches are copied from the host
        self.gt_a, self.gt_v = gt_a, gt_v  # (N, 25, 10) uint8 or None
        self.path = path

    def __len__(self):
        return len(self.filenames)

    def subset(self, rows):
        """The videos at `rows` (ascending indices) as a Split of their own (features copied)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        pick = (lambda a: None if a is None else a[rows])
        return Split([self.filenames[i] for i in rows], pick(self.labels),
                     {k: v[idx.to(v.device)] for k, v in self.feats.items()}, self.device,
                     pick(self.gt_a), pick(self.gt_v), self.path)

    def inputs(self, idx, v_idx=None):
        """Batch tensors on the model's device: audio of videos `idx`, visual of `v_idx` (default `idx`)."""
        v_idx = idx if v_idx is None else v_idx
        f = self.feats
        if self.resident:
            return f["audio"][idx], f["video"][v_idx], f["st"][v_idx]
        idx, v_idx = idx.cpu(), v_idx.cpu()
        return tuple(t.to(self.device, non_blocking=True)
                     for t in (f["audio"][idx], f["video"][v_idx], f["st"][v_idx]))


def load_split(source, label_csv, device, truth=None, name="split", filenames=None):
    """Read a label file and its features (validated) into a Split on `device`.

    source: a FeatureSource. truth: None, or the (audio, visual) event tables of read_eval_truth, for
    the split's dense truth. filenames: load these videos instead, with no labels; label_csv then
    only names the split.
    """
    if filenames is None:
        weak = llp.read_weak(label_csv, missing_hint=DATA_HINT)
        filenames, labels = weak.filenames, weak.labels
    else:
        filenames, labels = list(filenames), None
    dirs = source.dirs
    for key, folder in dirs.items():
        if not os.path.isdir(folder):
            raise AVVPError(f"{folder}: feature folder not found ({features.MODALITIES[key][0]} features; "
                            f"see feats/README.md, or run `python -m avvp.synth` for the synthetic set)")
    # feature files are named by stem: an LLP row <11-character id>_<start>_<end> reads <id>.npy
    stems = [llp.video_id(f) for f in filenames] if labels is not None else filenames
    stats = features.stat_files(dirs, stems)
    missing = features.missing_videos(dirs, stems, stats)
    if missing:
        if not source.skip_missing:
            first = stems.index(missing[0])
            where = next(features.feature_path(d, missing[0]) for d in dirs.values()
                         if not os.path.isfile(features.feature_path(d, missing[0])))
            raise AVVPError(f"{where}: feature file missing for video {filenames[first]} of {label_csv} "
                            f"({len(missing)} of {len(filenames)} videos lack features; --skip_missing drops them)")
        keep = ~np.isin(np.asarray(stems, dtype=object), missing)
        print(f"warning: {name}: skipping {len(missing)} of {len(filenames)} videos with missing feature files",
              file=sys.stderr)
        filenames = [f for f, k in zip(filenames, keep) if k]
        stems = [f for f, k in zip(stems, keep) if k]
        stats = {key: [st for st, k in zip(col, keep) if k] for key, col in stats.items()}
        labels = None if labels is None else labels[keep]
        if not filenames:
            raise AVVPError(f"{label_csv}: no video left after skipping missing feature files")
    with clock("load"):
        arrays = features.load_split(dirs, stems, desc=name, progress=source.progress,
                                     pool_frames=source.pool_frames,
                                     cache=use_cache(source.cache, dirs, len(filenames)), stats=stats)
        feats = place(arrays, device, name)
        gt_a = gt_v = None
        if truth is not None:
            gt_a, gt_v = (llp.dense_matrix(events, filenames) for events in truth)
    return Split(filenames, labels, feats, device, gt_a, gt_v, path=label_csv)


def use_cache(mode, dirs, n_videos):
    """--feature_cache: on, off, or auto = every split of an LLP-sized dataset (a feature folder of
    at least CACHE_MIN_VIDEOS videos: 11,849 for LLP); a small one (the demo's) is read per file."""
    if mode != "auto":
        return mode == "on"
    return n_videos >= CACHE_MIN_VIDEOS or features.count_videos(dirs["audio"], CACHE_MIN_VIDEOS) >= CACHE_MIN_VIDEOS


def place(arrays, device, name):
    """numpy arrays -> tensors for `device`: resident on the GPU when they fit, else kept on the
    host and streamed batch by batch (said on stdout)."""
    nbytes = sum(a.nbytes for a in arrays.values())
    with warnings.catch_warnings():  # memory-mapped caches are read-only; tensors are never written
        warnings.simplefilter("ignore", UserWarning)
        host = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if device.type != "cuda":
        return host
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= GPU_RESIDENT_FRACTION * free:
        return {k: v.to(device) for k, v in host.items()}
    print(f"{name}: features ({nbytes / 2**30:.1f} GiB) do not fit on {device} "
          f"({free / 2**30:.1f} GiB free): streaming batches from host memory")
    return host


def read_eval_truth(eval_audio, eval_visual):
    """The dense audio and visual eval files as event tables, each read (and warned about) once."""
    with clock("load"):
        return (llp.read_dense(eval_audio, missing_hint=DATA_HINT),
                llp.read_dense(eval_visual, missing_hint=DATA_HINT))


def load_eval_splits(source, label_val, label_test, eval_audio, eval_visual, device):
    """val and test splits with their dense truth."""
    truth = read_eval_truth(eval_audio, eval_visual)
    return (load_split(source, label_val, device, truth=truth, name="val"),
            load_split(source, label_test, device, truth=truth, name="test"))
