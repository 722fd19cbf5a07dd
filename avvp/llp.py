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


class Table:
    """Rows of an LLP file as named, equal-length 1-D numpy columns: table["filename"] is an (N,)
    array, len(table) is N. A DataFrame would do, but importing pandas costs every stage process
    0.3 s (more where the install keeps no bytecode), so the files the stages read and write go
    through this (pandas.DataFrame(table.columns) where a DataFrame is wanted)."""

    def __init__(self, columns):
        self.columns = {name: np.asarray(col) for name, col in columns.items()}
        lengths = {len(col) for col in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: { {k: len(v) for k, v in self.columns.items()} }")

    def __getitem__(self, name):
        return self.columns[name]

    def __len__(self):
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def take(self, rows):
        """The rows `rows` (boolean mask or indices), as a new Table."""
        return Table({name: col[rows] for name, col in self.columns.items()})

    @staticmethod
    def concat(tables):
        tables = list(tables)
        return Table({name: np.concatenate([t[name] for t in tables]) for name in tables[0].columns})


def _strings(values):
    """A 1-D array of str as an object array (what a DataFrame's string column holds)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def read_table(path, columns, allow_empty=False, missing_hint=None):
    """Read a tab-separated LLP file as strings; returns (Table of `columns`, line numbers of its rows).

    allow_empty: a header-only file is valid (a prediction file of a model that predicts nothing).
    missing_hint: what to do when the file does not exist, added to that error (the stages say
    where LLP's files come from).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: label file not found" + (f" ({missing_hint})" if missing_hint else ""))
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
    twice = [c for c in columns if header.count(c) > 1]
    if twice:
        raise AVVPError(f"{path}: column(s) {twice} appear more than once in the header {header}")
    rows, line_nos = [], []
    for ln, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        rows.append(line.split("\t"))
        line_nos.append(ln)
    if not rows and not allow_empty:
        raise AVVPError(f"{path}: header only, no rows")
    # a short row's missing trailing fields are empty strings; extra fields are ignored
    pos = [header.index(c) for c in columns]
    table = Table({c: _strings([r[i].strip() if i < len(r) else "" for r in rows]) for c, i in zip(columns, pos)})
    return table, np.asarray(line_nos, dtype=np.int64)


def _first_duplicate(values):
    """(index of the first value seen before, index of that earlier value), or None; and the count
    of rows that repeat an earlier value."""
    seen, first, count = {}, None, 0
    for i, v in enumerate(values):
        if v in seen:
            count += 1
            if first is None:
                first = (i, seen[v])
        else:
            seen[v] = i
    return first, count


def _to_number(text):
    """A number field as float (NaN when it is not one): ints, decimals and exponents, as
    pandas.to_numeric(errors='coerce') reads them (float() also takes '1_0' and non-ASCII digits
    such as '３'; those are not numbers here)."""
    if "_" in text or not text.isascii():
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("nan")


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


def read_weak(path, missing_hint=None):
    """Read a weak label file; errors on bad filenames, duplicates, unknown classes."""
    table, line_nos = read_table(path, ["filename", "event_labels"], missing_hint=missing_hint)
    names = table["filename"]
    bad = [i for i, n in enumerate(names) if not FILENAME_RE.match(n)]
    if bad:
        i = bad[0]
        raise AVVPError(f"{path}, line {line_nos[i]}: malformed filename {names[i]!r} "
                        f"(expected a video id then _start_end, e.g. BjCEufrlXm4_20_30)")
    dup, n_dup = _first_duplicate(names)
    if dup is not None:
        i, first = dup
        raise AVVPError(f"{path}, line {line_nos[i]}: duplicate filename {names[i]!r} (first at line "
                        f"{line_nos[first]}); {n_dup} duplicate row(s) in all")
    labels = np.zeros((len(table), NUM_CLASSES), dtype=np.float32)
    for i, (text, ln) in enumerate(zip(table["event_labels"], line_nos)):
        idx = parse_class_list(text, path, ln)
        if not idx:
            raise AVVPError(f"{path}, line {ln}: video {names[i]!r} has no event label")
        labels[i, idx] = 1.0
    return WeakLabels(names.tolist(), labels, path=os.fspath(path))


def read_dense(path, warn=True, allow_empty=False, missing_hint=None):
    """Read a dense (eval or prediction) file into a validated Table.

    Returns columns filename (str), onset (int), offset (int), cls (int class index), line (int).
    Malformed rows (bad filename, non-integer or out-of-range onset/offset, no class or several
    classes in one row) are dropped with a warning naming their line numbers, so that they can
    never be attached to a video.
    Rows with onset >= offset cover no segment (as in the released code, where
    `GT[c, on:off] = 1` is then a no-op); they are kept and mark nothing. Unknown class names
    are an error.
    """
    table, line_nos = read_table(path, ["filename", "onset", "offset", "event_labels"], allow_empty=allow_empty,
                                 missing_hint=missing_hint)
    onset = np.array([_to_number(t) for t in table["onset"]], dtype=np.float64)
    offset = np.array([_to_number(t) for t in table["offset"]], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok_num = (np.isfinite(onset) & np.isfinite(offset) & (onset == np.round(onset)) & (offset == np.round(offset))
                  & (onset >= 0) & (onset <= NUM_SEGMENTS) & (offset >= 0) & (offset <= NUM_SEGMENTS))
    ok_name = np.array([FILENAME_RE.match(n) is not None for n in table["filename"]], dtype=bool)
    ok_one = np.array([sum(1 for c in t.split(",") if c.strip()) == 1 for t in table["event_labels"]], dtype=bool)
    ok = ok_num & ok_name & ok_one
    if not ok.all():
        bad_lines = line_nos[~ok].tolist()
        if warn:
            warnings.warn(f"{path}: skipped {len(bad_lines)} malformed row(s) at line(s) "
                          f"{', '.join(map(str, bad_lines))}", MalformedRowWarning, stacklevel=2)
    table, line_nos, onset, offset = table.take(ok), line_nos[ok], onset[ok], offset[ok]
    cls = np.empty(len(table), dtype=np.int64)
    for i, (text, ln) in enumerate(zip(table["event_labels"], line_nos)):
        idx = parse_class_list(text, path, ln)
        if len(idx) != 1:
            raise AVVPError(f"{path}, line {ln}: expected exactly one class per row, got {text!r}")
        cls[i] = idx[0]
    return Table({"filename": table["filename"], "onset": onset.astype(np.int64),
                  "offset": offset.astype(np.int64), "cls": cls, "line": line_nos})


def dense_matrix(events, filenames):
    """Rows of read_dense -> (N, 25, 10) uint8 truth for the videos `filenames`, vectorized.

    Rows of videos outside `filenames` are ignored; videos with no row have no event.
    """
    filenames = list(filenames)
    row_of = {f: i for i, f in enumerate(filenames)}
    names = events["filename"]
    vid = np.fromiter((row_of.get(f, -1) for f in names), dtype=np.int64, count=len(names))
    keep = vid >= 0
    vid, cls = vid[keep], np.asarray(events["cls"])[keep]
    on, off = np.asarray(events["onset"])[keep], np.asarray(events["offset"])[keep]
    t = np.arange(NUM_SEGMENTS)
    cover = (t[None, :] >= on[:, None]) & (t[None, :] < off[:, None])  # (R, 10)
    out = np.zeros((len(filenames), NUM_CLASSES, NUM_SEGMENTS), dtype=np.uint8)
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
    """(N, 25, 10) 0/1 -> Table filename, onset, offset, event_labels: one row per contiguous run."""
    dense = np.asarray(dense).astype(np.int8)
    n, c, t = dense.shape
    padded = np.zeros((n, c, t + 2), dtype=np.int8)
    padded[:, :, 1:-1] = dense
    d = np.diff(padded, axis=2)                      # (N, 25, 11): +1 at onsets, -1 at offsets
    vs, cs, ons = np.nonzero(d == 1)                 # row-major: same order for onsets and offsets
    _, _, offs = np.nonzero(d == -1)
    names = _strings(list(filenames))
    return Table({"filename": names[vs], "onset": ons, "offset": offs,
                  "event_labels": _strings(CLASSES)[cs]})


def _column_text(col):
    """One column's cells as text, as pandas' to_csv writes them: floats at their shortest repr
    (float32 as float32), NaN as an empty cell."""
    col = np.asarray(col)
    if col.dtype.kind == "f":
        text = col.astype(str).astype(object)
        text[np.isnan(col)] = ""
        return text
    if col.dtype.kind in "iub":
        return col.astype(str).astype(object)
    return np.asarray([str(v) for v in col], dtype=object)


def write_tsv(table, path):
    """Write a Table (or a pandas DataFrame) as a tab-separated LLP-style file, atomically."""
    if hasattr(table, "to_csv"):  # a DataFrame (parse's per-class table, scripts)
        buf = io.StringIO()
        table.to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_NONE)
        text = buf.getvalue()
    else:
        if isinstance(table, dict):
            table = Table(table)
        cols = [_column_text(table[name]) for name in table.columns]
        lines = ["\t".join(table.columns)] + ["\t".join(cells) for cells in zip(*cols)]
        text = "\n".join(lines) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_weak(path, filenames, labels):
    """Write a weak label file from (N, 25) 0/1 labels."""
    labels = np.asarray(labels)
    text = [",".join(CLASSES[c] for c in np.flatnonzero(row)) for row in labels]
    write_tsv({"filename": _strings(list(filenames)), "event_labels": _strings(text)}, path)


# ----------------------------------------------------------------------------- modality-aware labels
# Stage 2 -> stage 3 hand-off, keyed by filename: one row per train video with its weak labels
# and the subset kept as audible and as visible.
MODALITY_COLUMNS = ["filename", "event_labels", "audio_labels", "visual_labels"]


def _names(row):
    return ",".join(CLASSES[c] for c in np.flatnonzero(row))


def write_modality_labels(path, filenames, weak, audio, visual):
    """weak, audio, visual: (N, 25) 0/1; audio and visual must be subsets of weak."""
    write_tsv({"filename": _strings(list(filenames)),
               "event_labels": _strings([_names(r) for r in weak]),
               "audio_labels": _strings([_names(r) for r in audio]),
               "visual_labels": _strings([_names(r) for r in visual])}, path)


def read_modality_labels(path):
    """-> (filenames, weak, audio, visual) with (N, 25) float32 arrays; validated."""
    table, line_nos = read_table(path, MODALITY_COLUMNS)
    names = table["filename"]
    dup, _ = _first_duplicate(names)
    if dup is not None:
        i = dup[0]
        raise AVVPError(f"{path}, line {line_nos[i]}: duplicate filename {names[i]!r}")
    out = [np.zeros((len(table), NUM_CLASSES), dtype=np.float32) for _ in range(3)]
    for col, arr in zip(MODALITY_COLUMNS[1:], out):
        for i, (text, ln) in enumerate(zip(table[col], line_nos)):
            arr[i, parse_class_list(text, path, ln)] = 1.0
    weak, audio, visual = out
    for col, arr in (("audio_labels", audio), ("visual_labels", visual)):
        extra = (arr > weak).any(axis=1)
        if extra.any():
            i = int(np.flatnonzero(extra)[0])
            raise AVVPError(f"{path}, line {line_nos[i]}: {col} of {names[i]!r} names a class that is not among "
                            f"its event_labels")
    return names.tolist(), weak, audio, visual
