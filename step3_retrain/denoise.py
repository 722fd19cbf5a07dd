"""Stage 3's joint-modal label denoising (--denoise joint), in the spirit of JoMoLD (Cheng et al.,
ECCV 2022): while retraining on the weak labels, a label is dropped from one modality when, within
its class, its loss in that modality is among the largest while its loss in the other modality is
among the smallest.

How many labels of a class may go is stage 2's estimate: the share of that class's weak labels its
modality-aware CSV drops in each modality. Stage 2 says how much noise a class carries (it needs no
truth, so the same holds on real LLP); the network's own losses, as training goes, say which labels.
The losses are ranked over the whole train split before every epoch (JoMoLD ranks within a batch of
128; a batch of 16 holds about one label per class, too few to rank), and the share ramps up
linearly over the first --denoise_warmup epochs, while the network is still fitting the easy labels.
"""
import numpy as np
import torch
import torch.nn.functional as F

from avvp.model import PROB_EPS
from avvp.predict import predict


def drop_ratios(weak, audio, visual):
    """Per class, the share of weak labels stage 2 dropped from each modality -> (25,), (25,)."""
    y = np.asarray(weak) > 0
    n = np.maximum(y.sum(axis=0), 1)
    return (y & (np.asarray(audio) == 0)).sum(axis=0) / n, (y & (np.asarray(visual) == 0)).sum(axis=0) / n


def _rank(score, keep):
    """Per column, each row's rank (0 = first) of `score` in ascending order among rows with keep;
    rows without keep rank after all others. score, keep: (N, C) -> (N, C) long."""
    s = torch.where(keep, score, torch.full_like(score, float("inf")))
    order = s.argsort(dim=0, stable=True)                                   # (N, C)
    return order.argsort(dim=0)


def joint_drops(loss_a, loss_v, pos, ratio_a, ratio_v):
    """JoMoLD's rule. loss_*: (N, C) per-label BCE of each modality's video-level
    probability; pos: (N, C) bool, the labels still present; ratio_*: (C,) share to drop.

    Of the n_c = floor(ratio * positives of c) labels with the largest visual loss and the
    n_c with the smallest audio loss, those in both are dropped from visual; audio alike, roles
    swapped. Returns (drop_audio, drop_visual), (N, C) bool.
    """
    k = pos.sum(dim=0)                                                      # (C,) labels per class
    n_a, n_v = (ratio_a * k).floor(), (ratio_v * k).floor()                 # (C,)
    low_a, low_v = _rank(loss_a, pos), _rank(loss_v, pos)                   # 0 = smallest loss
    high_a, high_v = _rank(-loss_a, pos), _rank(-loss_v, pos)               # 0 = largest loss
    drop_v = pos & (high_v < n_v) & (low_a < n_v)
    drop_a = pos & (high_a < n_a) & (low_v < n_a)
    return drop_a, drop_v


class JointDenoiser:
    """The trainer calls refresh() before each epoch and targets() for each batch.

    `dropped` (N, 25, 2), audio then visual: the labels the current epoch trains without, what
    stage 3 writes out as its denoised labels after the last epoch.
    """

    def __init__(self, weak, ratio_a, ratio_v, warmup, visual_smoothing, device):
        self.weak = torch.as_tensor(np.asarray(weak) > 0, device=device)     # (N, C) bool
        self.ratio_a = torch.as_tensor(ratio_a, dtype=torch.float32, device=device)
        self.ratio_v = torch.as_tensor(ratio_v, dtype=torch.float32, device=device)
        self.warmup, self.s = warmup, visual_smoothing
        self.dropped = torch.zeros(*self.weak.shape, 2, dtype=torch.bool, device=device)

    def refresh(self, model, split, epoch, batch_size=256):
        """Rank the current model's per-label losses on the train split and redraw `dropped`."""
        ramp = min(1.0, (epoch - 1) / self.warmup) if self.warmup > 0 else 1.0
        if ramp == 0:
            self.dropped.zero_()
            return
        p = predict(model, split, batch_size, keys=("audio_prob", "visual_prob"))
        y = self.weak.float()
        pa, pv = (torch.as_tensor(p[k], device=y.device).clamp(PROB_EPS, 1 - PROB_EPS)
                  for k in ("audio_prob", "visual_prob"))
        loss_a = F.binary_cross_entropy(pa, y, reduction="none")            # (N, C)
        loss_v = F.binary_cross_entropy(pv, (1 - self.s) * y + self.s / 2, reduction="none")
        drop_a, drop_v = joint_drops(loss_a, loss_v, self.weak, ramp * self.ratio_a, ramp * self.ratio_v)
        self.dropped = torch.stack([drop_a, drop_v], dim=-1)

    def targets(self, idx):
        """The batch's (audio, visual) targets (B, C): the weak labels less the dropped ones; a
        dropped visual label is smoothed like any absent one (target s / 2)."""
        y = self.weak[idx].float()
        d = self.dropped[idx]
        return y * ~d[..., 0], (1 - self.s) * (y * ~d[..., 1]) + self.s / 2

    def counts(self):
        """(audio, visual) labels dropped."""
        return int(self.dropped[..., 0].sum()), int(self.dropped[..., 1].sum())
