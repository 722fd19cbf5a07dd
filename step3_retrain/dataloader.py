"""Stage 3's data: stage 2's modality-aware labels, aligned to the train split by filename, and the
three splits."""
import os

import numpy as np

from avvp import data, llp
from avvp.errors import AVVPError


def read_labels(path):
    """Stage 2's hand-off, read (and checked) before minutes of feature loading."""
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: modality-aware label file not found; run stage 2 first: "
                        f"cd ../step2_find_exchange && python main_avvp.py --mode estimate_labels (or pass --label_ma)")
    return llp.read_modality_labels(path)


def load_splits(source, label_ma, label_train, label_val, label_test, eval_audio, eval_visual, device):
    """Stage 2's labels checked against the train split before val and test are read: (train, val,
    test) Splits and the modality-aware audio, visual labels (N, 25) in the train split's order."""
    table = read_labels(label_ma)
    train = data.load_split(source, label_train, device, name="train")
    audio, visual = align_modality_labels(table, label_ma, train)
    val, test = data.load_eval_splits(source, label_val, label_test, eval_audio, eval_visual, device)
    return train, val, test, audio, visual


def align_modality_labels(table, path, train):
    """Align stage 2's CSV (llp.read_modality_labels of `path`) to the train split by filename.

    It must cover exactly that split with the same weak labels. Returns audio, visual (N, 25).
    """
    names, weak, audio, visual = table
    pos = {f: i for i, f in enumerate(names)}
    missing = [f for f in train.filenames if f not in pos]
    extra = sorted(set(names) - set(train.filenames))
    if missing or extra:
        what = (f"{len(missing)} train video(s) missing, e.g. {missing[0]}" if missing else
                f"{len(extra)} video(s) not in the train split, e.g. {extra[0]}")
        raise AVVPError(f"{path}: does not match the train split {train.path} ({what}); "
                        f"re-run stage 2 on this split")
    order = np.asarray([pos[f] for f in train.filenames])
    weak, audio, visual = weak[order], audio[order], visual[order]
    diff = np.flatnonzero((weak != train.labels).any(axis=1))
    if diff.size:
        f = train.filenames[diff[0]]
        raise AVVPError(f"{path}: event_labels of {f} differ from {train.path} ({diff.size} video(s) differ); "
                        f"re-run stage 2 on this split")
    return audio, visual
