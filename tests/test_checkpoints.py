"""Checkpoints: released HAN / MA state dicts load and compute the released forward; every file is
read as weights only (a crafted pickle runs nothing); the project's own checkpoints, old ones
included, still load."""
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avvp import checkpoints
from avvp.errors import AVVPError
from avvp.model import MMIL_Net

from conftest import STAGE1, STAGE2, call_stage, run_stage

D = 512


def _attn_keys(prefix, g):
    return {prefix + ".in_proj_weight": torch.randn(3 * D, D, generator=g) / math.sqrt(D),
            prefix + ".in_proj_bias": torch.randn(3 * D, generator=g) * 0.1,
            prefix + ".out_proj.weight": torch.randn(D, D, generator=g) / math.sqrt(D),
            prefix + ".out_proj.bias": torch.randn(D, generator=g) * 0.1}


def _linear(name, out, inp, g):
    return {name + ".weight": torch.randn(out, inp, generator=g) / math.sqrt(inp), name + ".bias": torch.randn(out, generator=g) * 0.1}


def _norm(name, g):
    return {name + ".weight": 1 + 0.2 * torch.randn(D, generator=g), name + ".bias": 0.2 * torch.randn(D, generator=g)}


def _layer(prefix, g, cross=True):
    sd = {**_attn_keys(prefix + ".self_attn", g), **_linear(prefix + ".linear1", D, D, g),
          **_linear(prefix + ".linear2", D, D, g), **_norm(prefix + ".norm1", g), **_norm(prefix + ".norm2", g)}
    if cross:
        sd.update(_attn_keys(prefix + ".cm_attn", g))
    return sd


def released_state_dict(seed=0, ma=False):
    """A state dict with the released MMIL_Net's key layout and shapes (HAN's nets/net_audiovisual.py;
    ma=True adds the modules MA's stage-1 file also defines), every tensor random, none of it made
    by this project's module."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, out, inp in (("fc_prob", 25, D), ("fc_frame_att", 25, D), ("fc_av_att", 25, D), ("fc_a", D, 128),
                           ("fc_v", D, 2048), ("fc_st", D, 512), ("fc_fusion", D, 2 * D)):
        sd.update(_linear(name, out, inp, g))
    for enc in ("audio_encoder", "visual_encoder"):                 # nn.TransformerEncoder, unused
        sd.update(_layer(enc + ".layers.0", g, cross=False))
    sd.update(_layer("cmt_encoder.layers.0", g, cross=False))      # the CMT encoder, unused
    sd.update(_layer("hat_encoder.layers.0", g))                   # the one HAN layer
    for enc in ("cmt_encoder", "hat_encoder"):                     # the Encoder's own norms (norm=None: unused)
        sd.update(_norm(enc + ".norm1", g))
        sd.update(_norm(enc + ".norm2", g))
    if ma:
        for att in ("t_att", "t_att2"):
            sd.update(_linear(att + ".w_qs", D, D, g))
            sd.update(_linear(att + ".fc", D, D, g))
        sd.update(_linear("fc1", 256, 2 * D, g))
        sd.update(_linear("fc2", 2, 256, g))
    return sd


def released_forward(sd, audio, video, st):
    """The released MMIL_Net forward in plain tensor operations (eval mode: no dropout)."""
    def lin(x, n):
        return x @ sd[n + ".weight"].T + sd[n + ".bias"]

    def norm(x, n):
        return F.layer_norm(x, (D,), sd[n + ".weight"], sd[n + ".bias"], 1e-5)

    def attn(n, q, k, v):  # one head, (B, T, D)
        w, b = sd[n + ".in_proj_weight"], sd[n + ".in_proj_bias"]
        qq, kk, vv = q @ w[:D].T + b[:D], k @ w[D:2 * D].T + b[D:2 * D], v @ w[2 * D:].T + b[2 * D:]
        a = torch.softmax(qq @ kk.transpose(1, 2) / math.sqrt(D), dim=-1)
        return lin(a @ vv, n + ".out_proj")

    def han(q, o):
        p = "hat_encoder.layers.0"
        q = norm(q + attn(p + ".cm_attn", q, o, o) + attn(p + ".self_attn", q, q, q), p + ".norm1")
        return norm(q + lin(torch.relu(lin(q, p + ".linear1")), p + ".linear2"), p + ".norm2")

    b = audio.shape[0]
    x1 = lin(audio, "fc_a")
    vid_s = lin(video, "fc_v").view(b, 10, 8, D).mean(2)           # fc_v on 80 frames, then avg_pool over 8
    x2 = lin(torch.cat([vid_s, lin(st, "fc_st")], -1), "fc_fusion")
    x1, x2 = han(x1, x2), han(x2, x1)
    x = torch.stack([x1, x2], dim=2)                                 # (B, 10, 2, D)
    frame_prob = torch.sigmoid(lin(x, "fc_prob"))
    tp = torch.softmax(lin(x, "fc_frame_att"), dim=1) * frame_prob
    glob = (tp * torch.softmax(lin(x, "fc_av_att"), dim=2)).sum(2).sum(1)
    return glob, tp[:, :, 0].sum(1), tp[:, :, 1].sum(1), frame_prob


@pytest.mark.parametrize("ma,data_parallel", [(False, False), (True, False), (False, True)])
def test_released_state_dict_loads_and_gives_the_released_outputs(tmp_path, capsys, ma, data_parallel):
    sd = released_state_dict(seed=1, ma=ma)
    saved = {("module." + k if data_parallel else k): v for k, v in sd.items()}
    torch.save(saved, tmp_path / "MMIL_Net.pt")
    net = MMIL_Net().eval()
    ckpt = checkpoints.load_into(net, str(tmp_path / "MMIL_Net.pt"))
    assert ckpt["released"] and ckpt["epoch"] is None
    note = capsys.readouterr().out
    unused = "audio_encoder, cmt_encoder" + (", fc1, fc2" if ma else "") + ", hat_encoder.norm1, hat_encoder.norm2" + \
        (", t_att, t_att2" if ma else "") + ", visual_encoder"
    assert note.count("note:") == 1 and note.strip().endswith(unused)
    g = torch.Generator().manual_seed(2)
    audio, video, st = torch.randn(4, 10, 128, generator=g), torch.rand(4, 80, 2048, generator=g), torch.rand(4, 10, 512, generator=g)
    with torch.no_grad():
        want = released_forward(sd, audio, video, st)
        out = net(audio, video, st)
    for got, ref in zip((out.video_prob, out.audio_prob, out.visual_prob, out.frame_prob), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert out.frame_prob.std() > 0.05                               # not a degenerate comparison


def test_released_state_dict_missing_or_misshapen_tensor_is_one_line(tmp_path):
    sd = released_state_dict()
    del sd["hat_encoder.layers.0.cm_attn.out_proj.weight"]
    torch.save(sd, tmp_path / "a.pt")
    with pytest.raises(AVVPError, match=r"a\.pt: architecture does not match.*hat_encoder\.cm_attn\.out_proj\.weight"):
        checkpoints.load_into(MMIL_Net(), str(tmp_path / "a.pt"))
    sd = released_state_dict()
    sd["fc_prob.weight"] = torch.zeros(10, D)
    torch.save(sd, tmp_path / "b.pt")
    with pytest.raises(AVVPError, match=r"b\.pt: architecture does not match.*fc_prob\.weight"):
        checkpoints.load_into(MMIL_Net(), str(tmp_path / "b.pt"))


class _Payload:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))  # unpickling would create the file


def test_a_file_needing_arbitrary_unpickling_is_refused_and_runs_nothing(tmp_path):
    flag = tmp_path / "ran"
    torch.save({"model": {}, "x": _Payload(str(flag))}, tmp_path / "evil.pt")
    with pytest.raises(AVVPError, match=r"evil\.pt: refused: loading it would run arbitrary code \(io\.open\)"):
        checkpoints.load_checkpoint(str(tmp_path / "evil.pt"))
    assert not flag.exists()
    with open(tmp_path / "old_style.pt", "wb") as f:         # a plain pickle, not torch's zip format
        pickle.dump({"model": {}, "x": _Payload(str(flag))}, f)
    with pytest.raises(AVVPError, match=r"old_style\.pt: "):
        checkpoints.load_checkpoint(str(tmp_path / "old_style.pt"))
    assert not flag.exists()
    code, out, err = call_stage(STAGE1, ["--mode", "test", "--model_save_dir", tmp_path, "--checkpoint", "evil.pt",
                                         "--device", "cpu"])
    assert code == 2 and err.strip().count("\n") == 0 and "refused" in err and not flag.exists()


def test_new_checkpoints_hold_only_weights_and_old_ones_still_load_and_resume(stage1_out, tiny_llp, tmp_path):
    path = stage1_out / "models_step1" / "MMIL_Net.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    ckpt = torch.load(path, weights_only=True)
    # the same checkpoint as this project wrote it before: numpy's RNG state as numpy's own tuple
    n = ckpt["rng"]["numpy"]
    old = dict(ckpt, rng=dict(ckpt["rng"], numpy=(n["name"], n["key"].numpy().astype(np.uint32), n["pos"],
                                                  n["has_gauss"], n["gauss"])))
    models = tmp_path / "m"
    models.mkdir()
    torch.save(old, models / "MMIL_Net.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(models / "MMIL_Net.pt"))  # needs numpy
    back = checkpoints.load_checkpoint(str(models / "MMIL_Net.pt"))
    np.testing.assert_array_equal(back["rng"]["numpy"][1], old["rng"]["numpy"][1])
    r = run_stage(STAGE1, ["--mode", "train", *tiny_llp.args(), "--model_save_dir", models, "--epochs", "2",
                           "--resume", "--device", "cpu", "--batch_size", "16"])
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and torch.load(models / "MMIL_Net.pt", weights_only=True)["epoch"] == 2


def test_stages_use_a_released_model(stage1_out, tiny_llp, tmp_path):
    """--mode test of stage 1 and stage 2's base model, from HAN's released file layout."""
    models = tmp_path / "han"
    models.mkdir()
    torch.save(released_state_dict(seed=4), models / "MMIL_Net.pt")
    r = run_stage(STAGE1, ["--mode", "test", *tiny_llp.args(), "--model_save_dir", models, "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    assert "released HAN/MA model" in r.stdout and "Segment-level" in r.stdout
    out = tmp_path / "step2"
    r = run_stage(STAGE2, ["--mode", "estimate_labels", *tiny_llp.args(), *tiny_llp.truth_args(),
                           "--model_save_dir", models, "--output_dir", out, "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    assert "released HAN/MA model" in r.stdout
    labels = (out / "modality_aware_labels.csv").read_text().splitlines()
    assert len(labels) == 1 + 32                                       # header + the 32 train videos
