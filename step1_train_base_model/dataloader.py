"""Stage 1's training targets, from the weak labels alone."""
import numpy as np


def targets(labels, visual_smoothing):
    """(video, audio, visual) targets (N, 25) from weak labels y (N, 25): y, y and the smoothed
    visual target (1 - s) y + s / 2 (released: 0.9 y + 0.05)."""
    y = np.asarray(labels, dtype=np.float32)
    return y, y.copy(), (1.0 - visual_smoothing) * y + visual_smoothing / 2.0

