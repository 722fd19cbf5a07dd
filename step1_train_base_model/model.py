"""Stage 1's model: HAN with attentive MMIL pooling (avvp/model.py), trained on the weak labels
alone, with MA's audio-visual contrastive term (`--contrastive_weight 0`: the HAN baseline).

Without modality labels, each weak label y is the target of the video, of the audio and of the
visual prediction; the visual one is smoothed, since a weak label says little about what is seen.
"""
import numpy as np

from avvp.model import MMIL_Net, smoothed_visual  # noqa: F401  (MMIL_Net: the network main_avvp.py trains)


def targets(labels, visual_smoothing):
    """(video, audio, visual) targets (N, 25) from weak labels y (N, 25): y, y and the smoothed
    visual target (1 - s) y + s / 2 (released: 0.9 y + 0.05)."""
    y = np.asarray(labels, dtype=np.float32)
    return y, y.copy(), smoothed_visual(y, visual_smoothing)
