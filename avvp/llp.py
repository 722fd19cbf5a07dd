"""LLP annotation files: the 25 classes, weak (video-level) and dense (segment-level) labels.

Weak files (`AVVP_train.csv`, `AVVP_val_pd.csv`, `AVVP_test_pd.csv`, `AVVP_dataset_full.csv`):
    filename<TAB>event_labels           e.g.  BjCEufrlXm4_20_30<TAB>Speech,Dog
Dense files (`AVVP_eval_audio.csv`, `AVVP_eval_visual.csv`, and predictions in the same format):
    filename<TAB>onset<TAB>offset<TAB>event_labels     one event per row, segments onset..offset-1
Modality-aware files (stage 2 -> stage 3, keyed by filename):
    filename<TAB>event_labels<TAB>audio_labels<TAB>visual_labels
All are read and written with pandas; every write is atomic.
"""
import csv
import io
import os
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .errors import AVVPError
from .files import atomic_path

CLASSES = [
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm",
    "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner",
    "Baby_laughter", "Accordion", "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar",
    "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping",
]
NUM_CLASSES = len(CLASSES)  # 25
NUM_SEGMENTS = 10
FRAMES_PER_SEGMENT = 8  # res152 frames per 1-s segment (8 fps)
CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
# the annotation files' names, as released (and as avvp.synth writes them)
WEAK_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
EVAL_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
MODALITY_COLUMNS = ["filename", "event_labels", "audio_labels", "visual_labels"]

# An LLP filename: `<id>_<start>_<end>`, the id a YouTube id of YOUTUBE_ID characters and the clip's
# start and end in seconds. A few ids in the upstream eval files lost leading characters: such rows
# are well-formed but name no video of the splits.
FILENAME_RE = re.compile(r"^(?P<id>[A-Za-z0-9_-]+)_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")
YOUTUBE_ID = 11


class MalformedRowWarning(UserWarning):
    pass


def video_id(filename):
    """The stem of a video's feature files: the YouTube id of an LLP filename (FILENAME_RE with an id
    of YOUTUBE_ID characters), any other name as it is (videos of one's own, named by their stem)."""
    m = FILENAME_RE.match(filename)
    return m.group("id") if m and len(m.group("id")) == YOUTUBE_ID else filename


# ----------------------------------------------------------------------------- reading

def read_table(path, columns, allow_empty=False, missing_hint=None):
    """Read a tab-separated LLP file as strings: (DataFrame of `columns`, (N,) line numbers).

    Cells are stripped; a short row's missing trailing cells are empty strings, extra cells are
    ignored, blank lines are skipped. allow_empty: a header-only file is valid (a prediction file
    of a model that predicts nothing). missing_hint: what to do when the file does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: label file not found" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        # header=None: the header row is checked below (pandas would rename a repeated column);
        # blank lines are kept while reading, so that row i is line i + 1 of the file
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the header
            width = len(f.readline().split("\t"))  # rows longer than the header are cut to it
            f.seek(0)
            raw = pd.read_csv(f, sep="\t", header=None, dtype=str, keep_default_na=False, skip_blank_lines=False,
                              quoting=csv.QUOTE_NONE, engine="python", on_bad_lines=lambda cells: cells[:width])
    except pd.errors.EmptyDataError:
        raise AVVPError(f"{path}: empty file (expected a header: {' '.join(columns)})") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise AVVPError(f"{path}: cannot read ({e})") from None
    raw = raw.fillna("").apply(lambda col: col.str.strip())
    header = raw.iloc[0].tolist()
    if not any(header):
        raise AVVPError(f"{path}: empty file (expected a header: {' '.join(columns)})")
    missing = [c for c in columns if c not in header]
    if missing:
        raise AVVPError(f"{path}: header {header} lacks column(s) {missing} (expected tab-separated {columns})")
    twice = [c for c in columns if header.count(c) > 1]
    if twice:
        raise AVVPError(f"{path}: column(s) {twice} appear more than once in the header {header}")
    body = raw.iloc[1:]
    body = body[(body != "").any(axis=1)]
    if body.empty and not allow_empty:
        raise AVVPError(f"{path}: header only, no rows")
    table = pd.DataFrame({c: body[header.index(c)].to_numpy(dtype=object) for c in columns})
    return table, body.index.to_numpy(dtype=np.int64) + 1


def _first_duplicate(names):
    """(row of the first name seen before, row of that earlier name) or None, and the count of repeats."""
    names = pd.Series(names)
    repeated = names.duplicated()
    if not repeated.any():
        return None, 0
    i = int(np.flatnonzero(repeated)[0])
    return (i, int(np.flatnonzero(names == names[i])[0])), int(repeated.sum())


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


def read_weak(path, missing_hint=None):
    """A weak label file -> .filenames (list of N) and .labels (N, 25) float32 0/1, validated:
    errors on bad filenames, duplicates, unknown classes, videos without a label."""
    table, line_nos = read_table(path, ["filename", "event_labels"], missing_hint=missing_hint)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = [c.strip() for c in f.readline().split("\t")]
    if "onset" in header and "offset" in header:
        raise AVVPError(f"{path}: a dense file (onset, offset columns: eval truth or predictions), not a weak label "
                        "file (filename, event_labels)")
    names = table["filename"].tolist()
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
    return SimpleNamespace(filenames=names, labels=labels, path=os.fspath(path))


def read_dense(path, warn=True, allow_empty=False, missing_hint=None):
    """Read a dense (eval or prediction) file into a validated DataFrame.

    Columns filename (str), onset (int), offset (int), cls (int class index), line (int).
    Malformed rows (bad filename, non-integer or out-of-range onset/offset, no class or several
    classes in one row) are dropped with a warning naming their line numbers, so that they can
    never be attached to a video. Rows with onset >= offset cover no segment (as in the released
    code, where `GT[c, on:off] = 1` is then a no-op); they are kept and mark nothing, those with
    onset > offset with a warning, and a file where most rows have onset > offset is an error
    (its columns are swapped). Unknown class names are an error.
    """
    table, line_nos = read_table(path, ["filename", "onset", "offset", "event_labels"], allow_empty=allow_empty,
                                 missing_hint=missing_hint)
    onset = pd.to_numeric(table["onset"], errors="coerce").to_numpy(dtype=np.float64)
    offset = pd.to_numeric(table["offset"], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok_num = (np.isfinite(onset) & np.isfinite(offset) & (onset == np.round(onset)) & (offset == np.round(offset))
                  & (onset >= 0) & (onset <= NUM_SEGMENTS) & (offset >= 0) & (offset <= NUM_SEGMENTS))
    ok_name = table["filename"].str.match(FILENAME_RE).to_numpy(dtype=bool)
    ok_one = np.array([sum(1 for c in t.split(",") if c.strip()) == 1 for t in table["event_labels"]], dtype=bool)
    ok = ok_num & ok_name & ok_one
    if not ok.all() and warn:
        bad_lines = line_nos[~ok].tolist()
        warnings.warn(f"{path}: skipped {len(bad_lines)} malformed row(s) at line(s) "
                      f"{', '.join(map(str, bad_lines))}", MalformedRowWarning, stacklevel=2)
    inverted = ok & (onset > offset)
    if inverted.sum() > 0.5 * max(1, ok.sum()):
        raise AVVPError(f"{path}: {int(inverted.sum())} of {int(ok.sum())} rows have onset > offset (first: line "
                        f"{line_nos[inverted][0]}): are the onset and offset columns swapped?")
    if inverted.any() and warn:
        warnings.warn(f"{path}: {int(inverted.sum())} row(s) with onset > offset mark no segment, line(s) "
                      f"{', '.join(map(str, line_nos[inverted][:10].tolist()))}", MalformedRowWarning, stacklevel=2)
    cls = np.array([parse_class_list(t, path, ln)[0] for t, ln in zip(table["event_labels"][ok], line_nos[ok])],
                   dtype=np.int64)
    return pd.DataFrame({"filename": table["filename"][ok].to_numpy(dtype=object),
                         "onset": onset[ok].astype(np.int64), "offset": offset[ok].astype(np.int64),
                         "cls": cls, "line": line_nos[ok]})


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
    np.maximum.at(out, (vid, cls), cover.astype(np.uint8))  # overlapping or duplicate rows simply union
    return out


TRUTH_COVERAGE = 0.9  # share of a split's videos its dense truth must describe (the rest: noise-only labels)


def truth_coverage(events, filenames):
    """How dense truth tables (read_dense, one or several) describe a split: (how many of its videos
    have a row, sorted names with a row that are not in it). A video whose only labels are noise has
    no row, so a split's own truth may miss a few of its videos."""
    described = set().union(*(set(e["filename"].tolist()) for e in events))
    split = set(filenames)
    return len(described & split), sorted(described - split)


def truth_mismatch(events, filenames, what="split"):
    """Why the tables are not the truth of exactly this split (a video they describe is not in it, or
    they describe fewer than TRUTH_COVERAGE of its videos), or None when they are."""
    covered, foreign = truth_coverage(events, filenames)
    if foreign:
        return f"{foreign[0]} is not a {what} video"
    if covered < TRUTH_COVERAGE * len(filenames):
        return f"it describes {covered} of the {len(filenames)} {what} videos"
    return None


def read_dense_matrix(path, filenames, warn=True):
    """(N, 25, 10) uint8 truth of `filenames` from a dense file."""
    return dense_matrix(read_dense(path, warn=warn), filenames)


def read_modality_labels(path):
    """Stage 2's hand-off -> (filenames, weak, audio, visual) with (N, 25) float32 arrays; validated."""
    table, line_nos = read_table(path, MODALITY_COLUMNS)
    names = table["filename"].tolist()
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
    return names, weak, audio, visual


# ----------------------------------------------------------------------------- writing

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
    return pd.DataFrame({"filename": np.asarray(filenames, dtype=object)[vs], "onset": ons, "offset": offs,
                         "event_labels": np.asarray(CLASSES, dtype=object)[cs]})


def write_tsv(table, path):
    """Write a DataFrame (or a dict of equal-length columns) as a tab-separated file, atomically."""
    table = pd.DataFrame(table)
    buf = io.StringIO()
    table.to_csv(buf, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())


def class_names(labels):
    """(N, 25) 0/1 -> N strings 'Speech,Dog' (the classes of each row, in class order)."""
    return [",".join(CLASSES[c] for c in np.flatnonzero(row)) for row in np.asarray(labels)]


def write_weak(path, filenames, labels):
    """Write a weak label file from (N, 25) 0/1 labels."""
    write_tsv({"filename": list(filenames), "event_labels": class_names(labels)}, path)


def write_modality_labels(path, filenames, weak, audio, visual):
    """weak, audio, visual: (N, 25) 0/1; audio and visual must be subsets of weak."""
    write_tsv({"filename": list(filenames), "event_labels": class_names(weak),
               "audio_labels": class_names(audio), "visual_labels": class_names(visual)}, path)
