"""The HAN network with attentive MMIL pooling (Tian et al. ECCV 2020) and MA's contrastive loss.

Shapes: B videos, T = 10 one-second segments, C = 25 classes, d = 512.
    audio (B, 10, 128)   vggish
    video (B, 80, 2048)  res152 at 8 fps, or (B, 10, 2048) already averaged per segment
    st    (B, 10, 512)   r2plus1d_18
"""
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .llp import FRAMES_PER_SEGMENT

Output = namedtuple("Output", "video_prob audio_prob visual_prob frame_prob audio_feat visual_input")
# video_prob, audio_prob, visual_prob: (B, C); frame_prob: (B, T, 2, C) with modality 0 = audio;
# audio_feat: (B, T, d) audio AFTER the hybrid attention layer; visual_input: (B, T, d) the fused
# visual sequence BEFORE it. The last two feed the contrastive term.

PROB_EPS = 1e-7


class HybridAttentionLayer(nn.Module):
    """One HAN layer: q = LN1(q + drop(CrossAttn(q, o, o)) + drop(SelfAttn(q, q, q))); q = LN2(q + drop(FFN(q)))."""

    def __init__(self, d_model=512, nhead=1, dim_feedforward=512, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cm_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)      # inside the feed-forward
        self.dropout_cm = nn.Dropout(dropout)   # on the cross-modal attention output
        self.dropout_self = nn.Dropout(dropout)  # on the self-attention output
        self.dropout_ff = nn.Dropout(dropout)   # on the feed-forward output

    def forward(self, q, other):  # (B, T, d), (B, T, d) -> (B, T, d)
        # need_weights left at its default (True), as in the released call: torch then computes the
        # attention explicitly (bmm, softmax, dropout, bmm), the path the released code ran. With
        # need_weights=False it dispatches to a fused SDPA kernel instead: the same function up to
        # float rounding, but slower at T = 10 with one 512-wide head (H200, CUDA graph: 1.36 s per
        # epoch against 1.19 s; its backward kernel alone took 90 us per call). 2-core CPU: no
        # measurable difference. average_attn_weights=False only skips averaging the returned weights
        # over the one head: a reduction kernel whose output nothing reads (4 per training step).
        cross = self.cm_attn(q, other, other, average_attn_weights=False)[0]
        self_ = self.self_attn(q, q, q, average_attn_weights=False)[0]
        q = self.norm1(q + self.dropout_cm(cross) + self.dropout_self(self_))
        ff = self.linear2(self.dropout(F.relu(self.linear1(q))))
        return self.norm2(q + self.dropout_ff(ff))


class MMIL_Net(nn.Module):
    """HAN + attentive MMIL pooling, as released (the unused modules of the released file are left out).

    frame_pool: 'early' averages the 8 frames of a segment BEFORE fc_v, 'late' (the released order)
    applies fc_v to all 80 frames and averages after. fc_v is affine, so both compute the same
    function (mean(W x + b) = W mean(x) + b) and the same gradients, up to float rounding; 'early'
    does 8x less work on the largest layer and lets the loader keep (N, 10, 2048) instead of
    (N, 80, 2048) in memory. A (B, 10, 2048) video input is taken as already averaged.

    """

    def __init__(self, num_classes=25, d_model=512, dropout=0.1, frame_pool="early"):
        super().__init__()
        if frame_pool not in ("early", "late"):
            raise ValueError(f"frame_pool must be 'early' or 'late', got {frame_pool!r}")
        self.frame_pool = frame_pool
        self.fc_a = nn.Linear(128, d_model)
        self.fc_v = nn.Linear(2048, d_model)
        self.fc_st = nn.Linear(512, d_model)
        self.fc_fusion = nn.Linear(2 * d_model, d_model)
        # ONE layer, shared by both modalities (the released Encoder clones a single layer)
        self.hat_encoder = HybridAttentionLayer(d_model, nhead=1, dim_feedforward=512, dropout=dropout)
        self.fc_prob = nn.Linear(d_model, num_classes)
        self.fc_frame_att = nn.Linear(d_model, num_classes)
        self.fc_av_att = nn.Linear(d_model, num_classes)

    def visual_frames(self, video):  # (B, 80, 2048) or (B, 10, 2048) -> (B, 10, d)
        b, n, _ = video.shape
        if n == FRAMES_PER_SEGMENT * 10:
            if self.frame_pool == "late":
                return self.fc_v(video).view(b, 10, FRAMES_PER_SEGMENT, -1).mean(2)
            video = video.view(b, 10, FRAMES_PER_SEGMENT, -1).mean(2)
        return self.fc_v(video)

    def forward(self, audio, video, st):
        x_a = self.fc_a(audio)                                              # (B, 10, d)
        x_v = self.fc_fusion(torch.cat([self.visual_frames(video), self.fc_st(st)], dim=-1))  # (B, 10, d)
        # both modalities attend from their pre-layer inputs
        a_out = self.hat_encoder(x_a, x_v)                                   # (B, 10, d)
        v_out = self.hat_encoder(x_v, x_a)                                   # (B, 10, d)
        x = torch.stack([a_out, v_out], dim=2)                               # (B, 10, 2, d)
        frame_prob = torch.sigmoid(self.fc_prob(x))                          # (B, 10, 2, C)
        w_t = torch.softmax(self.fc_frame_att(x), dim=1)                     # over segments
        w_m = torch.softmax(self.fc_av_att(x), dim=2)                        # over modalities
        tp = w_t * frame_prob                                                # (B, 10, 2, C)
        video_prob = (tp * w_m).sum(dim=2).sum(dim=1)                        # (B, C)
        audio_prob = tp[:, :, 0].sum(dim=1)                                  # (B, C)
        visual_prob = tp[:, :, 1].sum(dim=1)                                 # (B, C)
        return Output(video_prob, audio_prob, visual_prob, frame_prob, a_out, x_v)


def contrastive_loss(audio_feat, visual_input, temperature=0.2, smoothing=0.1):
    """MA's audio-visual temporal contrastive term.

    Cosine similarity of every audio segment (after the attention layer) with every visual
    segment (before it), / temperature, softmax over the visual segments: p (B, 10, 10). The
    target t puts 1 - smoothing on the same segment and smoothing / 9 on each other one. As the
    released LabelSmoothingNCELoss: mean over the B * 10 audio segments of -log(sum_j t_j p_j), the
    log of the target-weighted probability (not the cross-entropy -sum_j t_j log p_j).
    """
    a = F.normalize(audio_feat, dim=-1)                                      # (B, T, d)
    v = F.normalize(visual_input, dim=-1)                                    # (B, T, d)
    logits = torch.bmm(a, v.transpose(1, 2)) / temperature                   # (B, T, T)
    target = contrastive_target(logits.shape[-1], smoothing, logits)         # (T, T)
    return -torch.log((target * torch.softmax(logits, dim=-1)).sum(-1)).mean()


def contrastive_target(t, smoothing, like):
    """(T, T) target: 1 - smoothing on the diagonal, smoothing / (T - 1) elsewhere."""
    off = smoothing / (t - 1)
    return torch.eye(t, dtype=like.dtype, device=like.device) * (1.0 - smoothing - off) + off


def clamped_bce(prob, target, reduction="mean"):
    """BCE with the probability clamped to [1e-7, 1 - 1e-7] first, as released (pooled probabilities
    can reach 0 or 1 exactly). A NaN probability (a diverging run) makes the loss NaN, which the
    trainer stops on, instead of failing inside BCE (an error on the CPU, a device assert on CUDA,
    for any input outside [0, 1]); with finite probabilities the value and gradients are unchanged
    (x + 0 * s = x)."""
    loss = F.binary_cross_entropy(torch.nan_to_num(prob, nan=0.5).clamp(PROB_EPS, 1 - PROB_EPS), target,
                                  reduction=reduction)
    return loss + 0 * prob.sum()


def smoothed_visual(y, smoothing):
    """The visual target (1 - s) y + s / 2 of visual labels y (released: 0.9 y + 0.05): the weak
    label says little about what is seen, so it is trusted less."""
    return (1.0 - smoothing) * y + smoothing / 2.0


def mmil_loss(out, target_video, target_audio, target_visual, contrastive_weight=1.0, temperature=0.2, smoothing=0.1):
    """BCE(audio prob, Pa) + BCE(visual prob, Pv) + BCE(video prob, y) + w * contrastive.

    out: the network's Output; targets (B, C). Returns (total loss, contrastive term or None).
    """
    loss = (clamped_bce(out.audio_prob, target_audio) + clamped_bce(out.visual_prob, target_visual)
            + clamped_bce(out.video_prob, target_video))
    nce = None
    if contrastive_weight:
        nce = contrastive_loss(out.audio_feat, out.visual_input, temperature, smoothing)
        loss = loss + contrastive_weight * nce
    return loss, nce


def loss_options(contrastive_weight, temperature, contrastive_smoothing):
    """mmil_loss's keyword arguments from a training stage's loss flags."""
    return {"contrastive_weight": contrastive_weight, "temperature": temperature, "smoothing": contrastive_smoothing}
