"""LLP annotation files: the 25 classes, weak (video-level) and dense (segment-level) labels.

Weak files (`AVVP_train.csv`, `AVVP_val_pd.csv`, `AVVP_test_pd.csv`, `AVVP_dataset_full.csv`):
    filename<TAB>event_labels           e.g.  BjCEufrlXm4_20_30<TAB>Speech,Dog
Dense files (`AVVP_eval_audio.csv`, `AVVP_eval_visual.csv`, and predictions in the same format):
    filename<TAB>onset<TAB>offset<TAB>event_labels     one event per row, segments onset..offset-1
"""
import csv
import io
import os
import re
import warnings

import numpy as np
import pandas as pd

from .utils import AVVPError, atomic_path

CLASSES = [
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm",
    "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner",
    "Baby_laughter", "Accordion", "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar",
    "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping",
]
NUM_CLASSES = len(CLASSES)  # 25
NUM_SEGMENTS = 10
CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
# the annotation files' names, as released (and as avvp.synth writes them)
WEAK_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
EVAL_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}

# A LLP filename is a YouTube id, then _start_end in seconds (a few ids in the upstream eval
# files lost leading characters: such rows are well-formed but name no video of the splits).
FILENAME_RE = re.compile(r"^[A-Za-z0-9_-]+_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")


class MalformedRowWarning(UserWarning):
    pass


def video_id(filename):
    """The feature file of a video is named by the first 11 characters of its filename."""
    return filename[:11]


def read_table(path, columns, allow_empty=False):
    """Read a tab-separated LLP file as strings; returns (DataFrame, line numbers of its rows).

    allow_empty: a header-only file is valid (a prediction file of a model that predicts nothing).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: label file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the header
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AVVPError(f"{path}: cannot read ({e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise AVVPError(f"{path}: empty file (expected a header: {' '.join(columns)})")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise AVVPError(f"{path}: header {header} lacks column(s) {missing} (expected tab-separated {columns})")
    rows, line_nos = [], []
    for ln, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        rows.append(fields + [""] * (len(header) - len(fields)))
        line_nos.append(ln)
    if not rows and not allow_empty:
        raise AVVPError(f"{path}: header only, no rows")
    width = len(header)
    df = pd.DataFrame([r[:width] for r in rows], columns=header, dtype=str)
    df = df[list(columns)].apply(lambda s: s.str.strip())
    return df, np.asarray(line_nos)


def parse_class_list(text, path, line):
    """'Speech,Dog' -> [0, 3]; an unknown name is an error naming it and the valid names."""
    out = []
    for name in text.split(","):
        name = name.strip()
        if not name:
            continue
        if name not in CLASS_INDEX:
            raise AVVPError(f"{path}, line {line}: unknown class {name!r}; valid classes: {', '.join(CLASSES)}")
        out.append(CLASS_INDEX[name])
    return out


class WeakLabels:
    """Video-level labels of one split: `filenames` (N,) and `labels` (N, 25) float32 0/1."""

    def __init__(self, filenames, labels, path=None):
        self.filenames = list(filenames)
        self.labels = labels
        self.path = path
        self.index = {f: i for i, f in enumerate(self.filenames)}

    def __len__(self):
        return len(self.filenames)


def read_weak(path):
    """Read a weak label file; errors on bad filenames, duplicates, unknown classes."""
    df, line_nos = read_table(path, ["filename", "event_labels"])
    names = df["filename"].to_numpy()
    bad = ~df["filename"].str.match(FILENAME_RE).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AVVPError(f"{path}, line {line_nos[i]}: malformed filename {names[i]!r} "
                        f"(expected a video id then _start_end, e.g. BjCEufrlXm4_20_30)")
    dup = df["filename"].duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(line_nos[np.flatnonzero(names == names[i])[0]])
        raise AVVPError(f"{path}, line {line_nos[i]}: duplicate filename {names[i]!r} (first at line {first}); "
                        f"{int(dup.sum())} duplicate row(s) in all")
    labels = np.zeros((len(df), NUM_CLASSES), dtype=np.float32)
    for i, (text, ln) in enumerate(zip(df["event_labels"].to_numpy(), line_nos)):
        idx = parse_class_list(text, path, ln)
        if not idx:
            raise AVVPError(f"{path}, line {ln}: video {names[i]!r} has no event label")
        labels[i, idx] = 1.0
    return WeakLabels(names.tolist(), labels, path=os.fspath(path))


def read_dense(path, warn=True, allow_empty=False):
    """Read a dense (eval or prediction) file into a validated DataFrame.

    Returns columns filename (str), onset (int), offset (int), cls (int class index), line (int).
    Malformed rows (bad filename, non-integer or out-of-range onset/offset, no class or several
    classes in one row) are dropped with a warning naming their line numbers, so that they can
    never be attached to a video.
    Rows with onset >= offset cover no segment (as in the released code, where
    `GT[c, on:off] = 1` is then a no-op); they are kept and mark nothing. Unknown class names
    are an error.
    """
    df, line_nos = read_table(path, ["filename", "onset", "offset", "event_labels"], allow_empty=allow_empty)
    onset = pd.to_numeric(df["onset"], errors="coerce").to_numpy()
    offset = pd.to_numeric(df["offset"], errors="coerce").to_numpy()
    with np.errstate(invalid="ignore"):
        ok_num = (np.isfinite(onset) & np.isfinite(offset) & (onset == np.round(onset)) & (offset == np.round(offset))
                  & (onset >= 0) & (onset <= NUM_SEGMENTS) & (offset >= 0) & (offset <= NUM_SEGMENTS))
    ok_name = df["filename"].str.match(FILENAME_RE).to_numpy()
    ok_one = np.asarray([sum(1 for c in t.split(",") if c.strip()) == 1 for t in df["event_labels"]], dtype=bool)
    ok = ok_num & ok_name & ok_one
    if not ok.all():
        bad_lines = line_nos[~ok].tolist()
        if warn:
            warnings.warn(f"{path}: skipped {len(bad_lines)} malformed row(s) at line(s) "
                          f"{', '.join(map(str, bad_lines))}", MalformedRowWarning, stacklevel=2)
    df, line_nos, onset, offset = df[ok], line_nos[ok], onset[ok], offset[ok]
    cls = np.empty(len(df), dtype=np.int64)
    for i, (text, ln) in enumerate(zip(df["event_labels"].to_numpy(), line_nos)):
        idx = parse_class_list(text, path, ln)
        if len(idx) != 1:
            raise AVVPError(f"{path}, line {ln}: expected exactly one class per row, got {text!r}")
        cls[i] = idx[0]
    return pd.DataFrame({"filename": df["filename"].to_numpy(), "onset": onset.astype(np.int64),
                         "offset": offset.astype(np.int64), "cls": cls, "line": line_nos})


def dense_matrix(events, filenames):
    """Rows of read_dense -> (N, 25, 10) uint8 truth for the videos `filenames`, vectorized.

    Rows of videos outside `filenames` are ignored; videos with no row have no event.
    """
    index = pd.Index(list(filenames))
    vid = index.get_indexer(events["filename"].to_numpy())
    keep = vid >= 0
    vid, cls = vid[keep], events["cls"].to_numpy()[keep]
    on, off = events["onset"].to_numpy()[keep], events["offset"].to_numpy()[keep]
    t = np.arange(NUM_SEGMENTS)
    cover = (t[None, :] >= on[:, None]) & (t[None, :] < off[:, None])  # (R, 10)
    out = np.zeros((len(index), NUM_CLASSES, NUM_SEGMENTS), dtype=np.uint8)
    # np.maximum.at: overlapping or duplicate rows simply union
    np.maximum.at(out, (vid, cls), cover.astype(np.uint8))
    return out


def read_dense_matrix(path, filenames, warn=True):
    """(N, 25, 10) uint8 truth of `filenames` from a dense file."""
    return dense_matrix(read_dense(path, warn=warn), filenames)


def runs(seq):
    """Contiguous runs of a 0/1 sequence (T,) -> list of (onset, offset), offset exclusive."""
    s = np.concatenate([[0], np.asarray(seq, dtype=np.int8), [0]])
    d = np.diff(s)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def events_table(dense, filenames):
    """(N, 25, 10) 0/1 -> DataFrame filename, onset, offset, event_labels: one row per contiguous run."""
    dense = np.asarray(dense).astype(np.int8)
    n, c, t = dense.shape
    padded = np.zeros((n, c, t + 2), dtype=np.int8)
    padded[:, :, 1:-1] = dense
    d = np.diff(padded, axis=2)                      # (N, 25, 11): +1 at onsets, -1 at offsets
    vs, cs, ons = np.nonzero(d == 1)                 # row-major: same order for onsets and offsets
    _, _, offs = np.nonzero(d == -1)
    names = np.asarray(list(filenames), dtype=object)
    return pd.DataFrame({"filename": names[vs] if len(vs) else np.array([], dtype=object),
                         "onset": ons, "offset": offs,
                         "event_labels": np.asarray(CLASSES, dtype=object)[cs] if len(cs) else np.array([], dtype=object)})


def write_tsv(df, path):
    """Write a DataFrame as a tab-separated LLP-style file, atomically."""
    buf = io.StringIO()
    df.to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())


def write_weak(path, filenames, labels):
    """Write a weak label file from (N, 25) 0/1 labels."""
    labels = np.asarray(labels)
    text = [",".join(CLASSES[c] for c in np.flatnonzero(row)) for row in labels]
    write_tsv(pd.DataFrame({"filename": list(filenames), "event_labels": text}), path)


# ----------------------------------------------------------------------------- modality-aware labels
# Stage 2 -> stage 3 hand-off, keyed by filename: one row per train video with its weak labels
# and the subset kept as audible and as visible.
MODALITY_COLUMNS = ["filename", "event_labels", "audio_labels", "visual_labels"]


def _names(row):
    return ",".join(CLASSES[c] for c in np.flatnonzero(row))


def write_modality_labels(path, filenames, weak, audio, visual):
    """weak, audio, visual: (N, 25) 0/1; audio and visual must be subsets of weak."""
    write_tsv(pd.DataFrame({"filename": list(filenames),
                            "event_labels": [_names(r) for r in weak],
                            "audio_labels": [_names(r) for r in audio],
                            "visual_labels": [_names(r) for r in visual]}), path)


def read_modality_labels(path):
    """-> (filenames, weak, audio, visual) with (N, 25) float32 arrays; validated."""
    df, line_nos = read_table(path, MODALITY_COLUMNS)
    names = df["filename"].to_numpy()
    dup = df["filename"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise AVVPError(f"{path}, line {line_nos[i]}: duplicate filename {names[i]!r}")
    out = [np.zeros((len(df), NUM_CLASSES), dtype=np.float32) for _ in range(3)]
    for col, arr in zip(MODALITY_COLUMNS[1:], out):
        for i, (text, ln) in enumerate(zip(df[col].to_numpy(), line_nos)):
            arr[i, parse_class_list(text, path, ln)] = 1.0
    weak, audio, visual = out
    for col, arr in (("audio_labels", audio), ("visual_labels", visual)):
        extra = (arr > weak).any(axis=1)
        if extra.any():
            i = int(np.flatnonzero(extra)[0])
            raise AVVPError(f"{path}, line {line_nos[i]}: {col} of {names[i]!r} names a class that is not among "
                            f"its event_labels")
    return names.tolist(), weak, audio, visual
