"""A synthetic LLP dataset with known dense truth: the project's embedded default.

The real LLP features (about 6.8 GB) are not shipped; this module writes a stand-in with the same
files, formats and shapes, and with the dense (segment-level, per-modality) truth of EVERY video,
train included, so that each stage can be scored against it.

    python -m avvp.synth --data_dir data --feats_dir feats --num_train 1000 --num_val 150 \
        --num_test 250 --seed 1 [--labels_from DIR] [--dtype float16|float32]

Generative model (all statistics below were read off the real LLP annotation files and are
embedded as constants, so that nothing outside this file is needed):

1. Labels. A video's label set is drawn from the 117 label sets of LLP's AVVP_train.csv with their
   frequencies: same number of labels per video (40.3% one, 58.8% two, 0.9% three), same class
   frequencies and co-occurrences (Speech in half of the videos, mostly paired).
2. Modality. Each weak label is audible only, visible only, or both, with the per-class rates of the
   val+test annotations (Speech 77% audible only, Cat 27% visible only, ...). Labels that the real
   annotators marked as neither (1%) are left out: every synthetic weak label is audible or visible.
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

Calibration: the per-space `signal` strengths were set so that the HAN baseline (stage 1 without
the contrastive term, 12 epochs, seed 1) on the default set (1,000 / 150 / 250 videos, seed 1)
scores close to HAN's published LLP test scores: segment-level audio 62.3, visual 51.8,
audio-visual 47.0, Type@AV 53.7, Event@AV 55.9 (LLP: 60.1, 52.9, 48.9, 54.0, 55.4). Nothing else
was tuned toward a result.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil

import numpy as np
from tqdm import tqdm

from .features import MODALITIES, feature_path, modality_dirs
from .llp import (CLASS_INDEX, CLASSES, EVAL_FILES, NUM_CLASSES, NUM_SEGMENTS, WEAK_FILES, events_table,
                  read_dense_matrix, read_weak, video_id, write_tsv, write_weak)
from .utils import AVVPError, atomic_write_text, cli

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
TRAIN_TRUTH_FILES = {"audio": "synthetic_train_eval_audio.csv", "visual": "synthetic_train_eval_visual.csv"}
META_FILE = "synthetic_meta.json"
MARKER_FILE = "SYNTHETIC"
DEFAULTS = dict(num_train=1000, num_val=150, num_test=250, seed=1, dtype="float16")
ID_PREFIX = "syn"
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

# ---------------------------------------------------------------- statistics of the real LLP files
# label set -> number of AVVP_train.csv videos carrying exactly that set (10,000 in all)
LABEL_SETS = (
    ("Speech,Dog", 668), ("Speech,Violin_fiddle", 571), ("Cello,Violin_fiddle", 497), ("Speech,Singing", 497),
    ("Helicopter", 439), ("Vacuum_cleaner", 388), ("Speech,Car", 366), ("Accordion", 361), ("Singing", 350),
    ("Speech,Basketball_bounce", 320), ("Speech,Motorcycle", 312), ("Car", 253),
    ("Speech,Baby_cry_infant_cry", 251), ("Speech,Cheering", 247), ("Chicken_rooster", 228),
    ("Speech,Acoustic_guitar", 227), ("Chainsaw", 218), ("Violin_fiddle", 218), ("Cheering", 215),
    ("Blender", 213), ("Frying_(food)", 208), ("Speech,Chicken_rooster", 204), ("Baby_cry_infant_cry", 174),
    ("Speech,Cat", 164), ("Speech,Helicopter", 146), ("Speech,Frying_(food)", 135),
    ("Basketball_bounce", 132), ("Lawn_mower", 130), ("Singing,Acoustic_guitar", 129), ("Fire_alarm", 116),
    ("Speech,Vacuum_cleaner", 104), ("Speech,Fire_alarm", 102), ("Speech,Clapping", 96),
    ("Speech,Baby_laughter", 89), ("Speech,Lawn_mower", 85), ("Speech,Blender", 78), ("Motorcycle", 76),
    ("Speech,Chainsaw", 66), ("Speech,Telephone_bell_ringing", 62), ("Speech,Banjo", 61),
    ("Violin_fiddle,Acoustic_guitar", 61), ("Acoustic_guitar", 58), ("Baby_laughter", 55), ("Dog", 51),
    ("Banjo,Singing", 45), ("Speech,Accordion", 43), ("Cello", 41), ("Clapping", 39),
    ("Cheering,Singing", 38), ("Banjo,Violin_fiddle", 36), ("Telephone_bell_ringing", 36),
    ("Singing,Violin_fiddle", 28), ("Speech,Cello", 26), ("Singing,Accordion", 21), ("Banjo", 17),
    ("Cat", 16), ("Speech,Cello,Violin_fiddle", 11), ("Banjo,Singing,Violin_fiddle", 10),
    ("Speech,Cheering,Singing", 10), ("Cello,Singing", 9), ("Chainsaw,Motorcycle", 9),
    ("Singing,Clapping", 9), ("Violin_fiddle,Accordion", 9), ("Banjo,Acoustic_guitar", 8),
    ("Cheering,Clapping", 7), ("Speech,Cheering,Clapping", 7), ("Dog,Singing", 6), ("Speech,Dog,Cat", 6),
    ("Speech,Singing,Acoustic_guitar", 6), ("Cello,Acoustic_guitar", 5), ("Dog,Cat", 5),
    ("Car,Motorcycle", 4), ("Cello,Violin_fiddle,Accordion", 4), ("Dog,Baby_cry_infant_cry", 4),
    ("Cello,Accordion", 3), ("Cello,Singing,Violin_fiddle", 3), ("Dog,Chicken_rooster", 3),
    ("Dog,Vacuum_cleaner", 3), ("Speech,Lawn_mower,Motorcycle", 3), ("Speech,Singing,Clapping", 3),
    ("Dog,Motorcycle", 2), ("Dog,Violin_fiddle", 2), ("Lawn_mower,Motorcycle", 2),
    ("Speech,Banjo,Acoustic_guitar", 2), ("Speech,Banjo,Singing", 2), ("Speech,Chainsaw,Lawn_mower", 2),
    ("Speech,Chainsaw,Motorcycle", 2), ("Speech,Cheering,Basketball_bounce", 2),
    ("Speech,Dog,Chicken_rooster", 2), ("Accordion,Acoustic_guitar", 1), ("Banjo,Accordion", 1),
    ("Banjo,Singing,Acoustic_guitar", 1), ("Banjo,Violin_fiddle,Acoustic_guitar", 1),
    ("Cat,Acoustic_guitar", 1), ("Cello,Banjo", 1), ("Cello,Singing,Acoustic_guitar", 1),
    ("Cello,Violin_fiddle,Acoustic_guitar", 1), ("Chainsaw,Lawn_mower", 1), ("Cheering,Basketball_bounce", 1),
    ("Dog,Baby_laughter", 1), ("Dog,Chainsaw", 1), ("Dog,Clapping", 1), ("Dog,Helicopter", 1),
    ("Dog,Telephone_bell_ringing", 1), ("Lawn_mower,Helicopter", 1), ("Singing,Baby_cry_infant_cry", 1),
    ("Speech,Banjo,Violin_fiddle", 1), ("Speech,Car,Motorcycle", 1), ("Speech,Cheering,Dog", 1),
    ("Speech,Dog,Baby_laughter", 1), ("Speech,Dog,Clapping", 1), ("Speech,Dog,Singing", 1),
    ("Speech,Singing,Accordion", 1), ("Speech,Singing,Violin_fiddle", 1),
    ("Speech,Violin_fiddle,Accordion", 1), ("Speech,Violin_fiddle,Acoustic_guitar", 1),
    ("Violin_fiddle,Clapping", 1),
)
# class: (audible only, visible only, both) counts of val+test weak labels
MODALITY_COUNTS = {
    "Speech": (752, 2, 217),
    "Car": (2, 27, 104),
    "Cheering": (74, 5, 49),
    "Dog": (13, 21, 134),
    "Cat": (2, 15, 39),
    "Frying_(food)": (4, 1, 59),
    "Basketball_bounce": (4, 14, 61),
    "Fire_alarm": (6, 0, 30),
    "Chainsaw": (1, 0, 44),
    "Cello": (23, 5, 93),
    "Banjo": (8, 2, 34),
    "Singing": (81, 1, 180),
    "Chicken_rooster": (7, 5, 86),
    "Violin_fiddle": (39, 6, 186),
    "Vacuum_cleaner": (6, 1, 92),
    "Baby_laughter": (7, 0, 25),
    "Accordion": (21, 1, 59),
    "Lawn_mower": (3, 1, 40),
    "Motorcycle": (4, 7, 71),
    "Helicopter": (9, 2, 92),
    "Acoustic_guitar": (13, 16, 126),
    "Telephone_bell_ringing": (8, 0, 11),
    "Baby_cry_infant_cry": (13, 1, 62),
    "Blender": (0, 1, 55),
    "Clapping": (52, 6, 69),
}
# class: how many segments (1..10) an audible val+test weak label covers in AVVP_eval_audio.csv
AUDIO_COVERAGE = {
    "Speech": (110, 133, 93, 105, 99, 80, 70, 72, 69, 138),
    "Car": (1, 0, 2, 2, 1, 2, 3, 3, 3, 89),
    "Cheering": (6, 16, 12, 13, 6, 5, 12, 6, 2, 45),
    "Dog": (15, 7, 19, 11, 11, 14, 10, 11, 15, 34),
    "Cat": (3, 12, 3, 3, 5, 5, 2, 2, 3, 3),
    "Frying_(food)": (0, 0, 2, 2, 0, 1, 0, 1, 0, 57),
    "Basketball_bounce": (12, 9, 6, 10, 9, 8, 3, 2, 2, 4),
    "Fire_alarm": (0, 2, 1, 2, 5, 2, 4, 1, 3, 16),
    "Chainsaw": (1, 1, 4, 0, 1, 1, 1, 0, 5, 31),
    "Cello": (1, 0, 1, 2, 1, 3, 8, 3, 4, 93),
    "Banjo": (0, 3, 2, 1, 0, 1, 3, 0, 1, 31),
    "Singing": (4, 5, 12, 20, 17, 22, 23, 36, 19, 103),
    "Chicken_rooster": (7, 4, 5, 6, 5, 5, 9, 7, 7, 38),
    "Violin_fiddle": (1, 2, 4, 7, 7, 14, 16, 11, 17, 146),
    "Vacuum_cleaner": (1, 1, 7, 4, 1, 2, 3, 2, 3, 74),
    "Baby_laughter": (1, 2, 4, 5, 1, 3, 6, 3, 1, 6),
    "Accordion": (1, 0, 1, 0, 2, 5, 1, 4, 2, 64),
    "Lawn_mower": (2, 1, 2, 1, 2, 2, 2, 3, 2, 26),
    "Motorcycle": (0, 3, 1, 6, 4, 1, 4, 0, 2, 54),
    "Helicopter": (2, 1, 1, 2, 2, 1, 1, 1, 5, 85),
    "Acoustic_guitar": (2, 3, 3, 3, 2, 6, 10, 11, 14, 85),
    "Telephone_bell_ringing": (0, 2, 2, 5, 0, 2, 1, 2, 0, 5),
    "Baby_cry_infant_cry": (0, 1, 1, 3, 3, 7, 10, 8, 13, 29),
    "Blender": (1, 6, 2, 5, 5, 7, 5, 4, 3, 17),
    "Clapping": (12, 17, 13, 14, 8, 6, 6, 6, 6, 33),
}
# class: how many segments (1..10) a visible val+test weak label covers in AVVP_eval_visual.csv
VISUAL_COVERAGE = {
    "Speech": (27, 34, 30, 27, 22, 16, 13, 16, 8, 26),
    "Car": (1, 2, 2, 2, 3, 5, 4, 8, 4, 100),
    "Cheering": (2, 2, 6, 5, 2, 2, 4, 2, 0, 29),
    "Dog": (0, 1, 1, 2, 0, 6, 4, 4, 4, 133),
    "Cat": (0, 1, 0, 1, 0, 3, 3, 3, 0, 43),
    "Frying_(food)": (1, 1, 1, 3, 2, 1, 0, 1, 1, 49),
    "Basketball_bounce": (10, 12, 11, 9, 12, 9, 6, 3, 0, 3),
    "Fire_alarm": (0, 1, 3, 1, 3, 1, 2, 2, 4, 13),
    "Chainsaw": (0, 0, 2, 2, 2, 2, 2, 2, 3, 29),
    "Cello": (1, 1, 2, 1, 2, 6, 3, 1, 2, 79),
    "Banjo": (1, 1, 1, 0, 0, 0, 1, 0, 1, 31),
    "Singing": (6, 6, 9, 12, 14, 23, 18, 24, 13, 56),
    "Chicken_rooster": (0, 4, 0, 0, 2, 1, 1, 2, 2, 79),
    "Violin_fiddle": (3, 2, 3, 7, 3, 4, 7, 6, 3, 154),
    "Vacuum_cleaner": (1, 1, 0, 2, 2, 3, 0, 3, 7, 74),
    "Baby_laughter": (0, 1, 2, 3, 2, 3, 4, 3, 0, 7),
    "Accordion": (0, 2, 2, 1, 1, 2, 2, 0, 0, 50),
    "Lawn_mower": (0, 0, 0, 0, 1, 1, 1, 2, 2, 34),
    "Motorcycle": (1, 2, 2, 1, 1, 3, 3, 5, 4, 56),
    "Helicopter": (2, 0, 3, 3, 2, 3, 1, 4, 5, 71),
    "Acoustic_guitar": (0, 2, 5, 4, 3, 1, 1, 2, 2, 122),
    "Telephone_bell_ringing": (0, 0, 1, 1, 1, 3, 1, 0, 0, 4),
    "Baby_cry_infant_cry": (0, 2, 0, 2, 3, 6, 5, 3, 7, 35),
    "Blender": (0, 0, 1, 2, 0, 1, 1, 2, 1, 48),
    "Clapping": (7, 11, 8, 8, 5, 4, 3, 3, 2, 24),
}
# number of runs (columns: 1..5) of a label covering k segments (rows: k = 1..9), val+test
RUNS_GIVEN_COVERAGE = {
    "audio": ((183, 0, 0, 0, 0), (183, 48, 0, 0, 0), (147, 46, 10, 0, 0), (146, 72, 10, 4, 0),
              (100, 66, 24, 6, 1), (101, 69, 30, 5, 0), (112, 78, 21, 2, 0), (98, 78, 23, 0, 0),
              (115, 86, 0, 0, 0)),
    "visual": ((63, 0, 0, 0, 0), (79, 10, 0, 0, 0), (79, 13, 3, 0, 0), (76, 18, 4, 1, 0),
               (48, 30, 9, 0, 1), (69, 32, 7, 1, 0), (56, 29, 4, 1, 0), (61, 36, 4, 0, 0),
               (44, 31, 0, 0, 0)),
}
# first run starts at segment 0 / last run ends at segment 10, for partial (not all-10) events:
# (neither, end only, start only, both) counts over val+test, single-run and multi-run events
ANCHORS = {
    "audio": {1: (331, 452, 402, 0), 2: (98, 155, 136, 290)},
    "visual": {1: (130, 204, 241, 0), 2: (26, 49, 50, 109)},
}
AV_SAME_EXTENT = 0.40   # P(one extent for both) for a label both audible and visible (LLP: 60% identical)
COVERAGE_PRIOR = 2.0    # pseudo-observations (shaped like the all-class histogram) per class histogram

# ---------------------------------------------------------------- feature model
FAMILIES = {
    "voice": ("Speech", "Singing", "Baby_laughter", "Baby_cry_infant_cry"),
    "crowd_sport": ("Cheering", "Clapping", "Basketball_bounce"),
    "animal": ("Dog", "Cat", "Chicken_rooster"),
    "instrument": ("Cello", "Banjo", "Violin_fiddle", "Acoustic_guitar", "Accordion"),
    "engine": ("Car", "Motorcycle", "Lawn_mower", "Chainsaw", "Helicopter"),
    "appliance": ("Vacuum_cleaner", "Blender", "Frying_(food)"),
    "alarm": ("Fire_alarm", "Telephone_bell_ringing"),
}
MODES_PER_CLASS = 3
NUM_DISTRACTORS = 40     # unlabelled event kinds outside the 25 classes
NUM_NUISANCE = 16        # shared background directions per feature space
FEATURE_PARAMS = dict(
    signal_gain=1.0,         # one knob on the strength of every labelled and distractor event
    family_share=0.35,       # fraction of a signature's variance shared with its family
    mode_spread=0.6,         # size of a mode's own component relative to the class signature
    strength_sigma=0.45,     # log-normal sd of an event's strength
    segment_wobble=0.3,      # per-segment relative wobble of a source's intensity (shared by A and V)
    frame_jitter=0.25,       # per-frame relative jitter of a visual event in res152
    distractor_rate=1.0,     # Poisson mean of distractor events per video and modality
    distractor_strength=0.8,  # their median strength relative to a labelled event
    shot_cut_rate=0.5,       # Poisson mean of shot cuts per 10-s clip (they change sound and picture)
    activity_rho=0.5,        # lag-1 autocorrelation of the shared activity level
    # per space: event signal, background (shared nuisance mix + private), shot change, activity,
    # per-segment noise; res152 adds per-frame noise; res152 and r2plus1d_18 are ReLU'd
    audio=dict(signal=0.55, nuisance=0.7, background=0.7, shot=0.4, activity=0.4, noise=1.0, scale=0.5),
    video=dict(signal=0.24, nuisance=0.5, background=0.5, shot=0.6, activity=0.3, noise=0.8,
               frame_noise=0.6, mean=0.0, mean_spread=0.4, scale=0.5),
    st=dict(signal=0.36, nuisance=0.5, background=0.5, shot=0.6, activity=0.5, noise=1.0, mean=0.0,
            mean_spread=0.4, scale=0.5),
)
SPACE_DIMS = {"audio": 128, "video": 2048, "st": 512}


# ---------------------------------------------------------------- random streams (all from one seed)
def _rng(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


_KEY_WORLD, _KEY_IDS, _KEY_LABELS, _KEY_TRUTH, _KEY_VIDEO = 1, 2, 3, 4, 5
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


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
    for i in range(n):
        for c in np.flatnonzero(labels[i]):
            kind = int(rng.choice(3, p=mod_p[c]))          # 0 audible only, 1 visible only, 2 both
            a = _extent(rng, cov["audio"][c], RUNS_GIVEN_COVERAGE["audio"], ANCHORS["audio"]) if kind != 1 else None
            v = _extent(rng, cov["visual"][c], RUNS_GIVEN_COVERAGE["visual"], ANCHORS["visual"]) if kind != 0 else None
            if kind == 2 and rng.random() < AV_SAME_EXTENT:
                if rng.random() < 0.5:
                    a = v
                else:
                    v = a
            if a is not None:
                audio[i, c] = a
            if v is not None:
                visual[i, c] = v
    return audio, visual


def make_filenames(seed, n):
    """n unique LLP-style filenames 'synXXXXXXXX_S_E', deterministic for the seed."""
    rng = _rng(seed, _KEY_IDS)
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


# ---------------------------------------------------------------- features
def _unit_rms(x):
    return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True))


def build_world(seed):
    """Per feature space: class-mode and distractor signatures, nuisance basis, per-dim means."""
    rng = _rng(seed, _KEY_WORLD)
    fam_names = list(FAMILIES)
    family_of = np.empty(NUM_CLASSES, dtype=np.int64)
    for f, members in enumerate(FAMILIES.values()):
        family_of[[CLASS_INDEX[c] for c in members]] = f
    g, spread = FEATURE_PARAMS["family_share"], FEATURE_PARAMS["mode_spread"]
    world = {}
    for space, d in SPACE_DIMS.items():
        fam = _unit_rms(rng.standard_normal((len(fam_names), d)))
        own = _unit_rms(rng.standard_normal((NUM_CLASSES, d)))
        base = np.sqrt(g) * fam[family_of] + np.sqrt(1 - g) * own                     # (25, d)
        modes = _unit_rms(rng.standard_normal((NUM_CLASSES, MODES_PER_CLASS, d)))
        sig = _unit_rms(base[:, None, :] + spread * modes).reshape(NUM_CLASSES * MODES_PER_CLASS, d)
        distract = _unit_rms(rng.standard_normal((NUM_DISTRACTORS, d)))
        p = FEATURE_PARAMS[space]
        world[space] = dict(
            sig=np.concatenate([sig, distract]).astype(np.float32),                   # (K, d)
            nuisance=_unit_rms(rng.standard_normal((NUM_NUISANCE, d))).astype(np.float32),
            energy=_unit_rms(rng.standard_normal(d)).astype(np.float32),
            mean=(p.get("mean", 0.0) + p.get("mean_spread", 0.0) * rng.standard_normal(d)).astype(np.float32),
        )
    return world


def _coefficients(rng, audio, visual):
    """Truth (25, 10) of both modalities -> (10, K) signature weights per segment, audio and visual.

    A labelled class is one source: its intensity over time (a per-segment wobble) is shared by
    its sound and its sight, each modality with its own overall strength and signature variant.
    Distractors (sources outside the 25 classes) come and go in each modality on their own.
    """
    fp = FEATURE_PARAMS
    base = NUM_CLASSES * MODES_PER_CLASS
    ca = np.zeros((NUM_SEGMENTS, base + NUM_DISTRACTORS))
    cv = np.zeros_like(ca)
    for c in np.flatnonzero(audio.any(1) | visual.any(1)):
        env = np.clip(1 + fp["segment_wobble"] * rng.standard_normal(NUM_SEGMENTS), 0.2, None)
        for dense, coef in ((audio, ca), (visual, cv)):
            if dense[c].any():
                m = int(rng.integers(MODES_PER_CLASS))
                coef[:, c * MODES_PER_CLASS + m] += rng.lognormal(0.0, fp["strength_sigma"]) * env * dense[c]
    for coef in (ca, cv):
        for _ in range(int(rng.poisson(fp["distractor_rate"]))):
            length = int(rng.integers(1, NUM_SEGMENTS + 1))
            on = int(rng.integers(0, NUM_SEGMENTS - length + 1))
            s = fp["distractor_strength"] * rng.lognormal(0.0, fp["strength_sigma"])
            coef[on:on + length, base + int(rng.integers(NUM_DISTRACTORS))] += s
    return ca.astype(np.float32), cv.astype(np.float32)


def _shared_dynamics(rng):
    """Per-segment structure common to sound and picture: shot index (10,) and activity (10,).

    Shot cuts (Poisson, at segment boundaries) change the scene of both modalities at once; the
    activity level (an AR(1) series: motion and loudness rise and fall together) drives a shared
    "energy" direction in every feature space.
    """
    fp = FEATURE_PARAMS
    n_cuts = min(int(rng.poisson(fp["shot_cut_rate"])), NUM_SEGMENTS - 1)
    cuts = np.sort(rng.choice(np.arange(1, NUM_SEGMENTS), size=n_cuts, replace=False))
    shot = np.searchsorted(cuts, np.arange(NUM_SEGMENTS), side="right")
    rho = fp["activity_rho"]
    z = rng.standard_normal(NUM_SEGMENTS)
    for t in range(1, NUM_SEGMENTS):
        z[t] = rho * z[t - 1] + np.sqrt(1 - rho ** 2) * z[t]
    return shot, z.astype(np.float32)


def _scene(rng, w, p, d, shot, activity):
    """(10, d) per-segment offset: the video's background, its shot changes, its activity."""
    shots = p["shot"] * _normal(rng, (int(shot[-1]) + 1, d))
    return _background(rng, w, p, d) + shots[shot] + p["activity"] * activity[:, None] * w["energy"]


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _background(rng, w, p, d):
    """A per-video offset: a mix of the space's shared nuisance directions plus a private part."""
    mix = _normal(rng, NUM_NUISANCE) @ w["nuisance"]
    return float(p["nuisance"] / np.sqrt(NUM_NUISANCE)) * mix + p["background"] * _normal(rng, d)


def render_video(world, audio, visual, rng):
    """Dense truth (25, 10) of each modality -> (vggish (10,128), res152 (80,2048), r2plus1d (10,512)) float32."""
    fp = FEATURE_PARAMS
    gain = fp["signal_gain"]
    ca, cv = _coefficients(rng, np.asarray(audio), np.asarray(visual))
    shot, activity = _shared_dynamics(rng)

    w, p, d = world["audio"], fp["audio"], SPACE_DIMS["audio"]
    x = _scene(rng, w, p, d, shot, activity) + (gain * p["signal"]) * (ca @ w["sig"])
    x += p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    vggish = p["scale"] * x

    w, p, d = world["video"], fp["video"], SPACE_DIMS["video"]
    frames = np.repeat(cv, 8, axis=0)                                                    # (80, K)
    frames *= np.maximum(1 + fp["frame_jitter"] * _normal(rng, frames.shape), 0.0)     # per-frame jitter
    seg = w["mean"] + _scene(rng, w, p, d, shot, activity) + p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    x = (gain * p["signal"]) * (frames @ w["sig"])
    x += p["frame_noise"] * _normal(rng, (8 * NUM_SEGMENTS, d))
    x = x.reshape(NUM_SEGMENTS, 8, d)
    x += seg[:, None, :]
    res152 = p["scale"] * np.maximum(x.reshape(8 * NUM_SEGMENTS, d), 0.0)

    w, p, d = world["st"], fp["st"], SPACE_DIMS["st"]
    x = w["mean"] + _scene(rng, w, p, d, shot, activity) + (gain * p["signal"]) * (cv @ w["sig"])
    x += p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    st = p["scale"] * np.maximum(x, 0.0)
    return vggish, res152, st


_CHUNK = 16
_WORLD_CACHE = {}


def _render_chunk(seed, dtype, dirs, chunk):
    """Render and save the features of some videos; returns how many. Runs in worker processes too."""
    if seed not in _WORLD_CACHE:
        _WORLD_CACHE.clear()
        _WORLD_CACHE[seed] = build_world(seed)
    world, out_dtype = _WORLD_CACHE[seed], np.dtype(dtype)
    for split_code, i, name, audio, visual in chunk:
        arrays = render_video(world, audio, visual, _rng(seed, _KEY_VIDEO, split_code, i))
        for key, arr in zip(("audio", "video", "st"), arrays):
            _save_npy(feature_path(dirs[key], name), arr.astype(out_dtype))
    return len(chunk)


def _auto_workers(n_videos):
    """Worker processes: one per CPU (at most 8), none for small sets (a process costs ~2 s to start)."""
    if n_videos < 300:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _save_npy(path, arr):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the whole dataset
def _from_real_labels(labels_from, nums, rng_train):
    """Splits from real LLP label files: (filenames, weak, audio truth, visual truth) per split."""
    out = {}
    for split in SPLITS:
        path = os.path.join(labels_from, WEAK_FILES[split])
        weak = read_weak(path)
        n = min(nums[split], len(weak))
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
            rng = _rng(seed, _KEY_LABELS, _SPLIT_CODE[split])
            labels = sample_label_sets(rng, n)
            a, v = sample_truth(_rng(seed, _KEY_TRUTH, _SPLIT_CODE[split]), labels)
            splits[split] = (names[at:at + n], labels, a, v)
            at += n
    else:
        splits = _from_real_labels(labels_from, nums, _rng(seed, _KEY_TRUTH, _SPLIT_CODE["train"]))

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
    jobs = [(_SPLIT_CODE[split], i, name, splits[split][2][i], splits[split][3][i])
            for split in SPLITS for i, name in enumerate(splits[split][0])]
    chunks = [jobs[i:i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    workers = _auto_workers(len(jobs)) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(jobs), desc="synthetic LLP features", unit="video", disable=not progress, mininterval=0.5)
    try:
        if workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                bar.update(_render_chunk(seed, dtype, dirs, chunk))
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_render_chunk, seed, dtype, dirs, chunk) for chunk in chunks]
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


def _parser():
    p = argparse.ArgumentParser(prog="python -m avvp.synth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data", help="label files go here (default: data)")
    p.add_argument("--feats_dir", default="feats", help="vggish/, res152/, r2plus1d_18/ go here (default: feats)")
    p.add_argument("--num_train", type=int, default=DEFAULTS["num_train"], help="train videos (default: %(default)s)")
    p.add_argument("--num_val", type=int, default=DEFAULTS["num_val"], help="val videos (default: %(default)s)")
    p.add_argument("--num_test", type=int, default=DEFAULTS["num_test"], help="test videos (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="one seed for everything (default: %(default)s)")
    p.add_argument("--labels_from", default=None, metavar="DIR",
                   help="reuse real LLP label files from DIR (AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv, "
                        "AVVP_eval_audio.csv, AVVP_eval_visual.csv): val/test features follow their dense truth; "
                        "--num_* take the first N videos of each file")
    p.add_argument("--dtype", choices=("float16", "float32"), default=DEFAULTS["dtype"],
                   help="feature file dtype (default: %(default)s; float16 halves the disk size)")
    p.add_argument("--workers", type=int, default=None,
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
