"""A synthetic LLP dataset with known dense truth: the project's embedded default.

The real LLP features (about 6.8 GB) are not shipped; this module writes a stand-in with the same
files, formats and shapes, and with the dense (segment-level, per-modality) truth of EVERY video,
train included, so that each stage can be scored against it.

    python -m avvp.synth --data_dir data --feats_dir feats --num_train 2500 --num_val 150 \
        --num_test 250 --seed 1 [--labels_from DIR] [--dtype float16|float32]

Generative model (the statistics were read off the real LLP annotation files and are embedded
as constants in avvp/synth_llp_stats.py; the feature model is avvp/synth_features.py):

1. Labels. A video's label set is drawn from the 117 label sets of LLP's AVVP_train.csv with their
   frequencies: same number of labels per video (40.3% one, 58.8% two, 0.9% three), same class
   frequencies and co-occurrences (Speech in half of the videos, mostly paired).
2. Modality. Each weak label is audible only, visible only, both or neither, with the per-class
   rates of the val+test annotations (Speech 77% audible only, Cat 27% visible only, ...).
   The weak labels are as noisy as LLP's: 1.1% of them are neither audible nor visible (no event
   in either dense file; 38 of 3,348 in val+test), and a video holds on average 0.035 events of
   a class missing from its weak labels (65 in LLP's 1,849 val+test videos), with LLP's classes
   and modalities for them. Both kinds of noise are in the dense truth of every split.
3. Extent. Per class and modality the number of covered segments follows the val+test histogram
   (smoothed); a partial event is one run or, as often in LLP, several runs, placed with LLP's
   tendency to touch the start or the end of the clip. A label that is both audible and visible
   shares one extent in both modalities with probability AV_SAME_EXTENT (LLP: 60% of such labels
   have identical audio and visual extents), otherwise the two extents are drawn independently.
4. Features. Each class has its own signature in each feature space: vggish (its sound), res152
   and r2plus1d_18 (its sight); signatures of classes in one family (voices, crowd and sport,
   animals, instruments, engines, appliances, alarms) share a component, and each class has several
   variants ("modes"). An event adds its signature to the segments it covers, scaled by a per-event
   strength (log-normal) and a per-segment intensity that the sound and the sight of one source
   share; in res152 each of the 8 frames of a covered segment gets its own jitter. On top: a
   per-video background (a mix of shared nuisance directions plus a private part), shot cuts that
   change the scene of sound and picture at once, an activity level (motion and loudness) that
   rises and falls in both, per-segment and per-frame noise, and unlabelled distractor events from
   classes outside the 25 (real clips are full of them). res152 and r2plus1d_18 are ReLU'd like
   CNN outputs; vggish is a signed embedding of about unit scale.

   Nothing visual is drawn for an audible-only label (e.g. off-screen Speech) and nothing audible
   for a visible-only one, so the weak video-level labels mislead each branch as in LLP: trained
   on the weak labels, the visual branch learns to call audible-only labels visible.

Size. LLP has 10,000 train videos; the default has 2,500, the most that fit with val and test in
1 GB of float16 files. At 1,000 train videos a HAN base model memorizes its training set: after
the recipe's 12 epochs it made 0-1 thresholded visual errors on the 25,000 (video, class) pairs
of the train weak labels, against 191 of 6,250 on test, so the released stage 2 (thresholds
scaled by the per-class train error) had nothing to go on. At 2,500 it errs on train as a model
on LLP does, and stage 2 drops visual labels.

Calibration: the per-space `signal` strengths were set so that the HAN baseline (stage 1 without
the contrastive term, 12 epochs, seed 1) on 1,000 / 150 / 250 videos scores close to HAN's
published LLP test scores (segment-level audio 62.3, visual 51.8, audio-visual 47.0, Type@AV
53.7, Event@AV 55.9; LLP: 60.1, 52.9, 48.9, 54.0, 55.4). Nothing else was tuned toward a result.

What it does not model: real sound and images (a class is a few fixed directions in each feature
space, not a distribution learnt from video), correlations between a video's classes beyond the
label sets, camera motion, and the released extractors' artefacts.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil

import numpy as np
from tqdm import tqdm

from .config import SEED, ArgumentParser, number
from .errors import AVVPError, cli
from .features import MODALITIES, modality_dirs
from .files import atomic_write_text
from .llp import (CLASS_INDEX, CLASSES, EVAL_FILES, NUM_CLASSES, NUM_SEGMENTS, WEAK_FILES, events_table,
                  read_dense_matrix, read_weak, video_id, write_tsv, write_weak)
from .synth_features import (CHUNK, KEY_IDS, KEY_LABELS, KEY_TRUTH, SPLIT_CODE, auto_workers, render_chunk,
                             rng_stream)
from .synth_llp_stats import (ANCHORS, AUDIO_COVERAGE, AV_SAME_EXTENT, COVERAGE_PRIOR, LABEL_SETS,
                              MISSING_CLASS_COUNTS, MISSING_KIND_COUNTS, MISSING_PER_VIDEO, MODALITY_COUNTS,
                              RUNS_GIVEN_COVERAGE, VISUAL_COVERAGE)

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
TRAIN_TRUTH_FILES = {"audio": "synthetic_train_eval_audio.csv", "visual": "synthetic_train_eval_visual.csv"}
META_FILE = "synthetic_meta.json"
MARKER_FILE = "SYNTHETIC"
DEFAULTS = dict(num_train=2500, num_val=150, num_test=250, seed=1, dtype="float16")
ID_PREFIX = "syn"
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


# ---------------------------------------------------------------- labels and truth
def _probs(counts):
    p = np.asarray(counts, dtype=np.float64)
    return p / p.sum()


def _label_set_table():
    sets = np.zeros((len(LABEL_SETS), NUM_CLASSES), dtype=np.float32)
    for i, (text, _) in enumerate(LABEL_SETS):
        sets[i, [CLASS_INDEX[c] for c in text.split(",")]] = 1.0
    return sets, _probs([n for _, n in LABEL_SETS])


def sample_label_sets(rng, n):
    """(n, 25) float32 0/1 weak labels drawn from LLP's train label-set frequencies."""
    sets, p = _label_set_table()
    return sets[rng.choice(len(sets), size=n, p=p)]


def _coverage_probs(table):
    counts = np.array([table[c] for c in CLASSES], dtype=np.float64)        # (25, 10)
    overall = _probs(counts.sum(0))
    return (counts + COVERAGE_PRIOR * overall) / (counts.sum(1, keepdims=True) + COVERAGE_PRIOR)


def _extent(rng, cov_p, runs_given_k, anchors):
    """One event's 0/1 mask over the 10 segments."""
    mask = np.zeros(NUM_SEGMENTS, dtype=np.uint8)
    k = int(rng.choice(NUM_SEGMENTS, p=cov_p)) + 1                  # covered segments
    if k == NUM_SEGMENTS:
        mask[:] = 1
        return mask
    r = int(rng.choice(5, p=_probs(runs_given_k[k - 1]))) + 1        # runs
    # pattern 0 neither end, 1 touches the end, 2 the start, 3 both; only those that fit:
    # r - 1 inner gaps plus one empty segment per free end must fit in the 10 - k empty ones
    fits = [(r - 1) + (pat not in (2, 3)) + (pat not in (1, 3)) <= NUM_SEGMENTS - k for pat in range(4)]
    pattern = int(rng.choice(4, p=_probs(np.asarray(anchors[1 if r == 1 else 2], np.float64) * fits)))
    sa, ea = pattern in (2, 3), pattern in (1, 3)                   # touches the start / the end
    need = (r - 1) + (not sa) + (not ea)
    # run lengths: a uniform composition of k into r positive parts
    cuts = np.sort(rng.choice(k - 1, size=r - 1, replace=False) + 1) if r > 1 else np.zeros(0, np.int64)
    lengths = np.diff(np.concatenate([[0], cuts, [k]]))
    # gaps: minimum 1 between runs and at a free end, 0 at an anchored end; the remaining empty
    # segments spread uniformly (stars and bars) over the slots that are not anchored
    gaps = np.array([0 if sa else 1] + [1] * (r - 1) + [0 if ea else 1])
    slots = np.flatnonzero(gaps)
    free = NUM_SEGMENTS - k - need
    m = free + len(slots) - 1
    bars = np.sort(rng.choice(m, size=len(slots) - 1, replace=False)) if len(slots) > 1 else np.zeros(0, np.int64)
    gaps[slots] += np.diff(np.concatenate([[-1], bars, [m]])) - 1
    t = 0
    for g, length in zip(gaps[:-1], lengths):
        t += int(g)
        mask[t:t + int(length)] = 1
        t += int(length)
    return mask


def sample_truth(rng, labels):
    """Weak labels (N, 25) -> dense truth (audio, visual), each (N, 25, 10) uint8.

    Every weak label is audible only, visible only or both (per-class LLP rates); its extents
    follow LLP's per-class coverage histograms, run counts and boundary anchoring.
    """
    labels = np.asarray(labels) > 0
    n = len(labels)
    audio = np.zeros((n, NUM_CLASSES, NUM_SEGMENTS), dtype=np.uint8)
    visual = np.zeros_like(audio)
    mod_p = [_probs(MODALITY_COUNTS[c]) for c in CLASSES]
    cov = {"audio": _coverage_probs(AUDIO_COVERAGE), "visual": _coverage_probs(VISUAL_COVERAGE)}
    missing_p = _probs([MISSING_CLASS_COUNTS.get(c, 0) for c in CLASSES])
    for i in range(n):
        events = [(c, int(rng.choice(4, p=mod_p[c]))) for c in np.flatnonzero(labels[i])]
        for _ in range(int(rng.poisson(MISSING_PER_VIDEO))):  # an event nobody labelled
            p = missing_p * ~labels[i]
            if p.sum() > 0:
                events.append((int(rng.choice(NUM_CLASSES, p=p / p.sum())),
                               int(rng.choice(3, p=_probs(MISSING_KIND_COUNTS)))))
        for c, kind in events:  # kind: 0 audible only, 1 visible only, 2 both, 3 neither
            a = _extent(rng, cov["audio"][c], RUNS_GIVEN_COVERAGE["audio"], ANCHORS["audio"]) if kind in (0, 2) else None
            v = _extent(rng, cov["visual"][c], RUNS_GIVEN_COVERAGE["visual"], ANCHORS["visual"]) if kind in (1, 2) else None
            if kind == 2 and rng.random() < AV_SAME_EXTENT:
                if rng.random() < 0.5:
                    a = v
                else:
                    v = a
            if a is not None:
                audio[i, c] = np.maximum(audio[i, c], a)
            if v is not None:
                visual[i, c] = np.maximum(visual[i, c], v)
    return audio, visual


def make_filenames(seed, n):
    """n unique LLP-style filenames 'synXXXXXXXX_S_E', deterministic for the seed."""
    rng = rng_stream(seed, KEY_IDS)
    alphabet = np.array(list(ID_ALPHABET))
    names, seen = [], set()
    while len(names) < n:
        vid = ID_PREFIX + "".join(rng.choice(alphabet, size=11 - len(ID_PREFIX)))
        start = 10 * int(rng.integers(0, 30))
        if vid in seen:
            continue
        seen.add(vid)
        names.append(f"{vid}_{start}_{start + 10}")
    return names


# ---------------------------------------------------------------- the whole dataset
def _from_real_labels(labels_from, nums, rng_train):
    """Splits from real LLP label files: (filenames, weak, audio truth, visual truth) per split."""
    out = {}
    for split in SPLITS:
        path = os.path.join(labels_from, WEAK_FILES[split])
        weak = read_weak(path)
        n = min(nums[split], len(weak.filenames))
        names, labels = weak.filenames[:n], weak.labels[:n]
        if split == "train":
            a, v = sample_truth(rng_train, labels)
        else:
            a = read_dense_matrix(os.path.join(labels_from, EVAL_FILES["audio"]), names, warn=False)
            v = read_dense_matrix(os.path.join(labels_from, EVAL_FILES["visual"]), names, warn=False)
        out[split] = (names, labels, a, v)
    ids = [video_id(f) for s in SPLITS for f in out[s][0]]
    if len(set(ids)) != len(ids):
        raise AVVPError(f"{labels_from}: two videos of the label files share a feature id (first 11 characters)")
    return out


def _check_targets(data_dir, feats_dir):
    """Refuse to overwrite folders holding real (not generated) LLP files."""
    if os.path.isdir(data_dir) and not os.path.isfile(os.path.join(data_dir, MARKER_FILE)):
        real = [f for f in sorted(os.listdir(data_dir)) if f.startswith("AVVP_") and f.endswith(".csv")]
        if real:
            raise AVVPError(f"{data_dir} holds LLP label files not written by avvp.synth ({', '.join(real[:3])}"
                            f"{', ...' if len(real) > 3 else ''}); refusing to overwrite them: pick another "
                            f"--data_dir or move them away")
    if os.path.isdir(feats_dir) and not os.path.isfile(os.path.join(feats_dir, MARKER_FILE)):
        for sub in modality_dirs(feats_dir).values():
            if os.path.isdir(sub) and any(f.endswith(".npy") for f in os.listdir(sub)):
                raise AVVPError(f"{sub} holds feature files not written by avvp.synth; refusing to "
                                f"overwrite them: pick another --feats_dir or move them away")


def generate(data_dir, feats_dir, num_train=DEFAULTS["num_train"], num_val=DEFAULTS["num_val"],
             num_test=DEFAULTS["num_test"], seed=DEFAULTS["seed"], labels_from=None, dtype=DEFAULTS["dtype"],
             progress=True, workers=None):
    """Write a synthetic LLP dataset (label files, dense truth of all splits, features).

    Same arguments -> identical bytes (whatever `workers`: None = one process per CPU for large
    sets). Returns a dict: filenames per split, truth arrays
    (audio/visual (N, 25, 10) uint8 per split), and the paths written.
    """
    data_dir, feats_dir = os.fspath(data_dir), os.fspath(feats_dir)
    nums = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in nums.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise AVVPError(f"--num_{split} must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise AVVPError(f"--seed must be a non-negative integer, got {seed!r}")
    if dtype not in ("float16", "float32"):
        raise AVVPError(f"--dtype must be float16 or float32, got {dtype!r}")
    if labels_from is not None and not os.path.isdir(labels_from):
        raise AVVPError(f"--labels_from {labels_from}: folder not found")
    _check_targets(data_dir, feats_dir)

    # ---- labels and truth
    if labels_from is None:
        names = make_filenames(seed, sum(nums.values()))
        splits, at = {}, 0
        for split in SPLITS:
            n = nums[split]
            rng = rng_stream(seed, KEY_LABELS, SPLIT_CODE[split])
            labels = sample_label_sets(rng, n)
            a, v = sample_truth(rng_stream(seed, KEY_TRUTH, SPLIT_CODE[split]), labels)
            splits[split] = (names[at:at + n], labels, a, v)
            at += n
    else:
        splits = _from_real_labels(labels_from, nums, rng_stream(seed, KEY_TRUTH, SPLIT_CODE["train"]))

    # ---- markers first: the folders are now owned by the generator
    for folder in (data_dir, feats_dir):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise AVVPError(f"cannot create {folder}: {e.strerror or e}") from None
    marker = ("SYNTHETIC LLP data written by `python -m avvp.synth` (not real LLP); "
              f"see {META_FILE} for the arguments.\n")
    atomic_write_text(os.path.join(data_dir, MARKER_FILE), marker)
    atomic_write_text(os.path.join(feats_dir, MARKER_FILE), marker)
    dirs = modality_dirs(feats_dir)
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
        # packed copies that avvp.features.load_split keeps of an earlier generation: stale now
        shutil.rmtree(os.path.join(d, ".packed"), ignore_errors=True)

    # ---- features (each video from its own random stream: the bytes do not depend on workers)
    jobs = [(SPLIT_CODE[split], i, name, splits[split][2][i], splits[split][3][i])
            for split in SPLITS for i, name in enumerate(splits[split][0])]
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    workers = auto_workers(len(jobs)) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(jobs), desc="synthetic LLP features", unit="video", disable=not progress, mininterval=0.5)
    try:
        if workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                bar.update(render_chunk(seed, dtype, dirs, chunk))
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(render_chunk, seed, dtype, dirs, chunk) for chunk in chunks]
                for fut in concurrent.futures.as_completed(futures):
                    bar.update(fut.result())
    finally:
        bar.close()
    keep = {video_id(f) + ".npy" for s in SPLITS for f in splits[s][0]}
    for d in dirs.values():         # stale files of an earlier generation in this (generated) folder
        for f in sorted(os.listdir(d)):
            if f.endswith(".npy") and f not in keep:
                os.remove(os.path.join(d, f))

    # ---- label files and truth
    paths = {}
    for split in SPLITS:
        names, labels, _, _ = splits[split]
        paths[split] = os.path.join(data_dir, WEAK_FILES[split])
        write_weak(paths[split], names, labels)
    eval_names = splits["val"][0] + splits["test"][0]
    for j, kind in enumerate(("audio", "visual")):
        dense = np.concatenate([splits["val"][2 + j], splits["test"][2 + j]])
        paths["eval_" + kind] = os.path.join(data_dir, EVAL_FILES[kind])
        write_tsv(events_table(dense, eval_names), paths["eval_" + kind])
        paths["train_" + kind] = os.path.join(data_dir, TRAIN_TRUTH_FILES[kind])
        write_tsv(events_table(splits["train"][2 + j], splits["train"][0]), paths["train_" + kind])
    meta = dict(
        synthetic=True, generator="avvp.synth", version=GENERATOR_VERSION,
        args=dict(num_train=num_train, num_val=num_val, num_test=num_test, seed=int(seed),
                  labels_from=None if labels_from is None else os.fspath(labels_from), dtype=dtype),
        videos={s: len(splits[s][0]) for s in SPLITS},
        weak_labels={s: int(splits[s][1].sum()) for s in SPLITS},
        train_truth=dict(audio=TRAIN_TRUTH_FILES["audio"], visual=TRAIN_TRUTH_FILES["visual"]),
        feature_folders={key: folder for key, (folder, _) in MODALITIES.items()},
    )
    paths["meta"] = os.path.join(data_dir, META_FILE)
    atomic_write_text(paths["meta"], json.dumps(meta, indent=2) + "\n")
    return dict(filenames={s: splits[s][0] for s in SPLITS},
                weak={s: splits[s][1] for s in SPLITS},
                audio={s: splits[s][2] for s in SPLITS},
                visual={s: splits[s][3] for s in SPLITS},
                paths=paths, feature_dirs=dirs)


def is_synthetic(data_dir):
    """True when data_dir was written by this generator."""
    return os.path.isfile(os.path.join(os.fspath(data_dir), MARKER_FILE))


def needs_default(data_dir):
    """True when data_dir should get the default set: it holds no train label file, or a synthetic
    set from another generator version or other arguments. Real LLP files are never replaced."""
    data_dir = os.fspath(data_dir)
    if not os.path.isfile(os.path.join(data_dir, WEAK_FILES["train"])):
        return True
    if not is_synthetic(data_dir):
        return False
    try:
        with open(os.path.join(data_dir, META_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return True
    wanted = dict(DEFAULTS, labels_from=None)
    return meta.get("version") != GENERATOR_VERSION or meta.get("args") != wanted


def _parser():
    p = ArgumentParser(prog="python -m avvp.synth", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data", help="label files go here (default: data)")
    p.add_argument("--feats_dir", default="feats", help="vggish/, res152/, r2plus1d_18/ go here (default: feats)")
    p.add_argument("--num_train", type=number(0, kind=int), default=DEFAULTS["num_train"], help="train videos (default: %(default)s)")
    p.add_argument("--num_val", type=number(0, kind=int), default=DEFAULTS["num_val"], help="val videos (default: %(default)s)")
    p.add_argument("--num_test", type=number(0, kind=int), default=DEFAULTS["num_test"], help="test videos (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=DEFAULTS["seed"],
                   help="one seed for everything, 0 .. 2**32 - 1 (default: %(default)s)")
    p.add_argument("--labels_from", default=None, metavar="DIR",
                   help="reuse real LLP label files from DIR (AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv, "
                        "AVVP_eval_audio.csv, AVVP_eval_visual.csv): val/test features follow their dense truth; "
                        "--num_* take the first N videos of each file")
    p.add_argument("--dtype", choices=("float16", "float32"), default=DEFAULTS["dtype"],
                   help="feature file dtype (default: %(default)s; float16 halves the disk size)")
    p.add_argument("--workers", type=number(1, kind=int), default=None,
                   help="processes rendering features (default: one per CPU, at most 8; the output is the same)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


@cli
def main(argv=None):
    args = _parser().parse_args(argv)
    res = generate(args.data_dir, args.feats_dir, args.num_train, args.num_val, args.num_test, args.seed,
                   labels_from=args.labels_from, dtype=args.dtype, progress=not args.no_progress,
                   workers=args.workers)
    n = {s: len(v) for s, v in res["filenames"].items()}
    print(f"wrote SYNTHETIC LLP data: {n['train']} train, {n['val']} val, {n['test']} test videos; "
          f"labels and truth in {args.data_dir}, features in {args.feats_dir}")


if __name__ == "__main__":
    main()
