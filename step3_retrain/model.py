"""Stage 3's model: the network of stage 1 (avvp/model.py), trained from scratch toward the
modality-aware labels of stage 2: a label stage 2 dropped from one modality is no longer that
modality's target (--denoise joint instead redraws the drops as it trains: denoise.py)."""
import numpy as np

from avvp.model import MMIL_Net, smoothed_visual  # noqa: F401  (MMIL_Net: the network main_avvp.py trains)


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
    pv = smoothed_visual(v, visual_smoothing)
    if not smooth_dropped:
        pv = np.where((y > 0) & (v == 0), 0.0, pv).astype(np.float32)
    video = pa.copy() if quirk else y.copy()
    return video, pa, pv
