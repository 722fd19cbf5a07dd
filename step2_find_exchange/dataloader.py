"""Stage 2's data: the train split, seeded partners sharing no class, the hidden truth of
synthetic train videos (to score the estimated labels) when it exists, and the check that the val
split has the dense truth --calibrate val learns from."""
import os

import numpy as np

from avvp import llp
from avvp.errors import AVVPError


TRUTH_COVERAGE = 0.9  # share of a split's videos its dense truth must describe (the rest: noise-only labels)


def label_bits(labels):
    """(N, C) 0/1 -> (N,) int64 bitmask of each video's label set."""
    return (np.asarray(labels) > 0).astype(np.int64) @ (1 << np.arange(labels.shape[1], dtype=np.int64))


def pick_partners(labels, seed, filenames=None, draws=1, max_rounds=64):
    """For every video i, `draws` partners j != i whose label sets share no class with i's.

    Uniform among valid partners, reproducible for a seed (the released code draws them
    unseeded inside DataLoader workers); the draws come one after another from one generator, so
    the first is the same for every `draws` (draws=1 is the released one-partner rule).
    Vectorised rejection sampling; videos still unmatched after `max_rounds` draws get an
    exhaustive search. (draws, N) int64.
    """
    bits = label_bits(labels)
    rng = np.random.default_rng(seed)
    return np.stack([_draw_partners(bits, rng, filenames, max_rounds) for _ in range(draws)])


def _draw_partners(bits, rng, filenames, max_rounds):
    n = len(bits)
    partner = np.full(n, -1, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(max_rounds):
        if todo.size == 0:
            break
        cand = rng.integers(0, n, size=todo.size)
        ok = (bits[todo] & bits[cand]) == 0
        partner[todo[ok]] = cand[ok]
        todo = todo[~ok]
    for i in todo:  # rare: videos whose valid partners are few
        valid = np.flatnonzero((bits & bits[i]) == 0)
        if valid.size == 0:
            name = filenames[i] if filenames is not None else f"#{i}"
            raise AVVPError(f"video {name}: no training video shares no class with it, cannot pick a swap partner")
        partner[i] = valid[rng.integers(0, valid.size)]
    return partner


def load_truth(args, filenames):
    """Dense (N, 25, 10) audio and visual truth of train videos, or None when there is none to score against.

    None when the truth files are absent (real LLP has no train truth), and also, with a note,
    when they are not the truth of this train split: some video they describe is not in it, or
    they describe fewer than TRUTH_COVERAGE of its videos (a video whose only labels are noise
    has no event in either file). Scored against another set's files (the demo's synthetic truth
    left in ../data while training on other data, say), every label would count as truly absent
    and every drop as right.
    """
    paths = (args.train_truth_audio, args.train_truth_visual)
    if not all(os.path.isfile(p) for p in paths):
        return None
    events = [llp.read_dense(p) for p in paths]
    described = set(events[0]["filename"].tolist()) | set(events[1]["filename"].tolist())
    train = set(filenames)
    foreign = sorted(described - train)
    covered = len(described & train)
    if foreign or covered < TRUTH_COVERAGE * len(train):
        why = (f"{foreign[0]} is not a train video" if foreign else
               f"it describes {covered} of the {len(train)} train videos")
        print(f"note: dropped labels not scored: the train truth ({paths[0]}, {paths[1]}) is not that of "
              f"this train split ({why})")
        return None
    return tuple(llp.dense_matrix(e, filenames) for e in events)


def check_val_truth(val, eval_audio, eval_visual):
    """--calibrate val: a one-line error unless the eval files describe TRUTH_COVERAGE of the val
    split (LLP's describe all 649 val videos). A val video they miss would count as lacking every
    event in both modalities, and the rule would learn to drop everything."""
    described = int((val.gt_a.any(axis=(1, 2)) | val.gt_v.any(axis=(1, 2))).sum())
    if described < TRUTH_COVERAGE * len(val):
        raise AVVPError(f"{eval_audio}, {eval_visual}: the dense truth describes {described} of the {len(val)} val "
                        f"videos of {val.path}; --calibrate val needs the val split's truth (LLP's eval files "
                        f"cover val and test)")
