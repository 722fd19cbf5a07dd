"""Stage 2's data in and out: seeded swap partners, the dense truth it learns from (val) or scores
against (synthetic train), and the three files it hands on."""
import json
import os
import sys

import numpy as np
import pandas as pd

from avvp import data, llp
from avvp.errors import AVVPError
from avvp.files import atomic_group, atomic_write_text


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
    if draws > 1:
        few = valid_partner_counts(bits) < draws                              # (N,)
        if few.any():
            name = filenames[int(np.argmax(few))] if filenames is not None else f"#{int(np.argmax(few))}"
            print(f"warning: --partners {draws}: {int(few.sum())} video(s) have fewer valid partners than that "
                  f"(first: {name}); their partners repeat", file=sys.stderr)
    rng = np.random.default_rng(seed)
    return np.stack([_draw_partners(bits, rng, filenames, max_rounds) for _ in range(draws)])


def valid_partner_counts(bits, chunk=2048):
    """(N,) how many videos share no class with each video (label bit sets (N,)), in chunks of rows."""
    return np.concatenate([((bits[i:i + chunk, None] & bits[None, :]) == 0).sum(1)
                           for i in range(0, len(bits), chunk)])


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


def load_train_truth(audio_csv, visual_csv, filenames):
    """Dense (N, 25, 10) audio and visual truth of the train videos, or None when there is none to
    score against: the files are absent (real LLP has no train truth), or, with a note, they are not
    this split's truth (llp.truth_mismatch): scored against another set's files (the demo's
    synthetic truth left in ../data while training on other data, say), every label would count as
    truly absent and every drop as right."""
    if not (os.path.isfile(audio_csv) and os.path.isfile(visual_csv)):
        return None
    events = [llp.read_dense(p) for p in (audio_csv, visual_csv)]
    why = llp.truth_mismatch(events, filenames, "train")
    if why:
        print(f"note: dropped labels not scored: the train truth ({audio_csv}, {visual_csv}) is not that of "
              f"this train split ({why})")
        return None
    return tuple(llp.dense_matrix(e, filenames) for e in events)


def load_val(source, label_val, eval_audio, eval_visual, device):
    """The val split with its dense truth, for an estimator that learns from it. A one-line error,
    before its features are read, unless the eval files describe llp.TRUTH_COVERAGE of the split
    (LLP's describe all 649 val videos): a val video they miss would count as lacking every event in
    both modalities, and a rule learnt there would drop everything."""
    truth = data.read_eval_truth(eval_audio, eval_visual)
    names = llp.read_weak(label_val, missing_hint=data.DATA_HINT).filenames
    covered, _ = llp.truth_coverage(truth, names)
    if covered < llp.TRUTH_COVERAGE * len(names):
        raise AVVPError(f"{eval_audio}, {eval_visual}: the dense truth describes {covered} of the {len(names)} val "
                        f"videos of {label_val}; this estimator needs the val split's truth (LLP's eval files "
                        f"cover val and test)")
    return data.load_split(source, label_val, device, truth=truth, name="val")


def present(split):
    """(audio, visual) (N, C) bool: whether each event is truly audible / visible in each video."""
    return split.gt_a.any(axis=2), split.gt_v.any(axis=2)


def dropped_table(ev, drop_a, drop_v, per_drop):
    """dropped_labels.csv: one row per dropped label: video, class, its partners (space-separated
    names), the swapped (mean over partners) and original probabilities, and the estimator's own
    per-drop columns (per_drop: {column: {"audio": (N, C), "visual": (N, C)}})."""
    names, classes = np.asarray(ev.filenames, dtype=object), np.asarray(llp.CLASSES, dtype=object)
    partner = np.asarray([" ".join(names[p] for p in col) for col in np.asarray(ev.partners).T], dtype=object)
    parts = []
    for kind, drop, swapped in (("audio", drop_a, ev.vis_swapped), ("visual", drop_v, ev.aud_swapped)):
        vi, ci = np.nonzero(drop)
        table = pd.DataFrame({
            "filename": names[vi], "event_label": classes[ci], "dropped": np.full(len(vi), kind, dtype=object),
            "partner": partner[vi],
            "swapped": np.full(len(vi), "visual" if kind == "audio" else "audio", dtype=object),
            "audio_prob_swapped": swapped["audio_prob"][vi, ci].round(6),
            "visual_prob_swapped": swapped["visual_prob"][vi, ci].round(6),
            "audio_prob_original": ev.orig["audio_prob"][vi, ci].round(6),
            "visual_prob_original": ev.orig["visual_prob"][vi, ci].round(6)})
        for column, values in per_drop.items():
            table[column] = np.asarray(values[kind])[vi, ci].round(6)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def run_meta(run_args, models, out_of_fold, estimate, weak):
    """estimate_meta.json: the run's flags, the model(s) read (out_of_fold: the fold models of
    --folds, and the one-checkpoint keys stay empty), the estimator's own entries and the drop counts."""
    one = not out_of_fold
    first = models[0]
    return {"args": run_args, "model_stage": first.checkpoint.get("stage"),
            "checkpoint": os.path.abspath(first.path) if one else None,
            "epoch": first.checkpoint.get("epoch") if one else None,
            "fold_checkpoints": [] if one else [os.path.abspath(m.path) for m in models],
            **estimate.meta, "dropped_audio": int(estimate.drop_audio.sum()),
            "dropped_visual": int(estimate.drop_visual.sum()), "weak_labels": int((weak > 0).sum()),
            "train_videos": len(weak)}


def write_outputs(output_dir, output, ev, estimate, meta):
    """The three files, replaced together: the modality-aware labels (stage 3 reads them), the
    evidence of each drop, and the run's metadata. Returns the label CSV's path."""
    weak = ev.labels > 0
    out_csv = os.path.join(output_dir, output)
    with atomic_group():
        llp.write_modality_labels(out_csv, ev.filenames, weak, weak & ~estimate.drop_audio,
                                  weak & ~estimate.drop_visual)
        llp.write_tsv(dropped_table(ev, estimate.drop_audio, estimate.drop_visual, estimate.per_drop),
                      os.path.join(output_dir, "dropped_labels.csv"))
        atomic_write_text(os.path.join(output_dir, "estimate_meta.json"), json.dumps(meta, indent=2, default=str))
    return out_csv
