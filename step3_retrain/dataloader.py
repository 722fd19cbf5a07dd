"""Stage 3's data: the splits, and training targets built from stage 2's modality-aware labels."""
import numpy as np

from avvp.errors import AVVPError


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


def targets(weak, audio, visual, visual_smoothing=0.1, quirk=True, smooth_dropped=True):
    """Stage-3 targets (video, audio, visual), (N, 25) each.

    audio  Pa = y with dropped audio labels set to 0.
    visual Pv = (1 - s) * v + s / 2 where v is y with dropped visual labels set to 0, so a dropped
           visual label's target is s / 2 = 0.05 (the released loop smooths the label vector it is
           given); smooth_dropped=False gives exactly 0 for dropped labels.
    video  y; with quirk=True (released behaviour: the audio target and the video target are one
           array object in the released dataloader) a dropped AUDIO label also zeroes that class in
           the video target, i.e. video target = Pa.
    """
    y = np.asarray(weak, dtype=np.float32)
    pa = np.asarray(audio, dtype=np.float32) * y
    v = np.asarray(visual, dtype=np.float32) * y
    pv = (1.0 - visual_smoothing) * v + visual_smoothing / 2.0
    if not smooth_dropped:
        pv = np.where((y > 0) & (v == 0), 0.0, pv).astype(np.float32)
    video = pa.copy() if quirk else y.copy()
    return video, pa, pv
