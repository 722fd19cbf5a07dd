"""Stage 1's training targets, from the weak labels alone, and its cross-fitting folds."""
import numpy as np


def targets(labels, visual_smoothing):
    """(video, audio, visual) targets (N, 25) from weak labels y (N, 25): y, y and the smoothed
    visual target (1 - s) y + s / 2 (released: 0.9 y + 0.05)."""
    y = np.asarray(labels, dtype=np.float32)
    return y, y.copy(), (1.0 - visual_smoothing) * y + visual_smoothing / 2.0


def folds(n, k, seed):
    """Split videos 0..n-1 into k seeded folds of near-equal size: a list of k ascending index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]
