"""Stage 3's joint-modal label denoising (--denoise joint), in the spirit of JoMoLD (Cheng et al.,
ECCV 2022): while retraining on the weak labels, a label is dropped from one modality when, within
its class, its loss in that modality is among the largest while its loss in the other modality is
among the smallest.

How many labels of a class may go is stage 2's estimate: the share of that class's weak labels its
modality-aware CSV drops in each modality. Stage 2 says how much noise a class carries (it needs no
truth, so the same holds on real LLP); the network's own losses, as training goes, say which labels.
The losses are ranked over the whole train split before every epoch (JoMoLD ranks within a batch of
128; a batch of 16 holds about one label per class, too few to rank), and the share ramps up
linearly over the first WARMUP_EPOCHS epoch, while the network is still fitting the easy labels.
"""
import numpy as np
import torch

from avvp.model import clamped_bce, smoothed_visual
from avvp.predict import predict

WARMUP_EPOCHS = 1.0  # epochs over which the share of labels dropped ramps up from 0


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
    """The targets of --denoise joint, redrawn before each epoch: called as (model, epoch) ->
    (video, audio, visual) targets (N, C) for the whole train split (engine.fit's refresh_targets),
    built by make_targets(audio labels, visual labels) from the weak labels less the current drops.

    `dropped` (N, 25, 2), audio then visual: the labels the current epoch trains without, what
    stage 3 writes out as its denoised labels after the last epoch.
    """

    def __init__(self, split, ratio_a, ratio_v, visual_smoothing, make_targets, batch_size=256,
                 warmup=WARMUP_EPOCHS):
        self.split, self.make_targets, self.batch_size = split, make_targets, batch_size
        self.warmup, self.s = warmup, visual_smoothing
        device = split.feats["audio"].device
        self.weak = torch.as_tensor(np.asarray(split.labels) > 0, device=device)  # (N, C) bool
        self.ratio_a = torch.as_tensor(ratio_a, dtype=torch.float32, device=device)
        self.ratio_v = torch.as_tensor(ratio_v, dtype=torch.float32, device=device)
        self.dropped = torch.zeros(*self.weak.shape, 2, dtype=torch.bool, device=device)

    def __call__(self, model, epoch):
        """Rank the current model's per-label losses on the train split (the loss of each weak label
        against its own modality's prediction, the visual one smoothed as in training), redraw
        `dropped`, and return the targets."""
        ramp = min(1.0, (epoch - 1) / self.warmup) if self.warmup > 0 else 1.0
        if ramp == 0:
            self.dropped.zero_()
        else:
            y = self.weak.float()
            p = predict(model, self.split, self.batch_size, keys=("audio_prob", "visual_prob"))
            pa, pv = (torch.as_tensor(p[k], device=y.device) for k in ("audio_prob", "visual_prob"))
            loss_a = clamped_bce(pa, y, reduction="none")                              # (N, C)
            loss_v = clamped_bce(pv, smoothed_visual(y, self.s), reduction="none")
            drop_a, drop_v = joint_drops(loss_a, loss_v, self.weak, ramp * self.ratio_a, ramp * self.ratio_v)
            self.dropped = torch.stack([drop_a, drop_v], dim=-1)
        keep = (self.weak[..., None] & ~self.dropped).cpu().numpy()                   # (N, C, 2)
        return self.make_targets(keep[..., 0], keep[..., 1])

    def counts(self):
        """(audio, visual) labels dropped."""
        return int(self.dropped[..., 0].sum()), int(self.dropped[..., 1].sum())
