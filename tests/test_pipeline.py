"""The three seed commands end to end on a tiny synthetic set, determinism, and unit tests of
the network, the contrastive target, the stage-2 drop rule and the stage-3 targets."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp import llp, synth
from avvp.config import path_args
from avvp.model import MMIL_Net, contrastive_loss, contrastive_target, mmil_loss

ROOT = Path(__file__).resolve().parents[1]


def stage_module(step, name):
    """Import a stage folder's leaf module (dataloader.py / model.py) under a unique name."""
    spec = importlib.util.spec_from_file_location(f"{step}_{name}", ROOT / step / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    synth.generate(root / "data", root / "feats", num_train=48, num_val=12, num_test=12, seed=3, progress=False)
    return root


def paths(root):
    return path_args(root / "data", root / "feats") + ["--no_progress"]


def run(step, args, env=None):
    r = subprocess.run([sys.executable, "main_avvp.py", *args], cwd=ROOT / step, capture_output=True, text=True,
                       timeout=300, env=None if env is None else {**os.environ, **env})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def pipeline(root, out, env=None):
    """Stage 1 (1 epoch), stage 2, stage 3 (1 epoch); every hand-off through files in `out`."""
    p = paths(root)
    s1 = run("step1_train_base_model", ["--mode", "train", *p, "--epochs", "1", "--model_save_dir", f"{out}/m1"],
             env)
    s2 = run("step2_find_exchange", ["--mode", "estimate_labels", *p, "--model_save_dir", f"{out}/m1",
                                     "--output_dir", f"{out}/s2",
                                     "--train_truth_audio", f"{root}/data/synthetic_train_eval_audio.csv",
                                     "--train_truth_visual", f"{root}/data/synthetic_train_eval_visual.csv"])
    s3 = run("step3_retrain", ["--mode", "retrain", *p, "--epochs", "1", "--model_save_dir", f"{out}/m3",
                               "--label_ma", f"{out}/s2/modality_aware_labels.csv"], env)
    return s1, s2, s3


@pytest.fixture(scope="module")
def ran(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    return out, pipeline(tiny, out)


def test_end_to_end_files_and_handoffs(tiny, ran):
    out, (s1, s2, s3) = ran
    ckpt = torch.load(out / "m1" / "MMIL_Net.pt", weights_only=True)
    assert ckpt["stage"] == "stage1" and ckpt["epoch"] == 1
    assert set(ckpt["metrics"]) == {"val", "test"} and ckpt["args"]["epochs"] == 1
    # stage 2 loads it strictly (load_model_strict raises on any mismatch) and says so
    assert "loaded" in s2 and "MMIL_Net.pt" in s2
    names, weak, audio, visual = llp.read_modality_labels(out / "s2" / "modality_aware_labels.csv")
    train = llp.read_weak(tiny / "data" / "AVVP_train.csv")
    assert names == train.filenames and np.array_equal(weak, train.labels)
    assert (audio <= weak).all() and (visual <= weak).all()
    meta = json.loads((out / "s2" / "estimate_meta.json").read_text())
    assert meta["dropped_audio"] == int((weak - audio).sum()) and meta["dropped_visual"] == int((weak - visual).sum())
    assert "precision" in meta["quality"]["visual"] and "precision" in s2
    # the evidence file: one row per dropped label, naming a label that the hand-off lacks
    import pandas as pd
    ev = pd.read_csv(out / "s2" / "dropped_labels.csv", sep="\t")
    assert len(ev) == meta["dropped_audio"] + meta["dropped_visual"]
    row = {f: i for i, f in enumerate(names)}
    for _, r in ev.iterrows():
        i, c = row[r["filename"]], llp.CLASS_INDEX[r["event_label"]]
        kept = audio if r["dropped"] == "audio" else visual
        assert weak[i, c] == 1 and kept[i, c] == 0 and (weak[row[r["partner"]]] * weak[i]).sum() == 0
    # stage 3 consumed exactly stage 2's drops
    assert f"{meta['dropped_audio']} audio and {meta['dropped_visual']} visual dropped" in s3
    for d in ("m1", "m3"):
        m = json.loads((out / d / "test_metrics.json").read_text())
        assert set(m) >= {"seg_a", "seg_v", "seg_av", "seg_type", "seg_event",
                          "evt_a", "evt_v", "evt_av", "evt_type", "evt_event"}
        assert 0.0 <= m["seg_type"] <= 100.0
        assert (out / d / "val_metrics.json").is_file()
    assert "Segment-level" in s3 and "Event-level" in s3
    # each stage ends by saying where its time went
    for out_text, phases in ((s1, ("load", "train", "val", "save", "test")), (s2, ("load", "swap passes")),
                             (s3, ("load", "train", "val", "save", "test"))):
        line = [ln for ln in out_text.splitlines() if ln.startswith("time: start-up ")]
        assert len(line) == 1, out_text[-1500:]
        for ph in phases:
            assert f" {ph} " in line[0], (ph, line[0])
    # no temp files left behind by the atomic writers
    assert not [p for p in out.rglob("*.tmp")]


def test_same_seed_same_csv_and_metrics(tiny, ran, tmp_path):
    out1, _ = ran
    pipeline(tiny, tmp_path)
    for rel in ("s2/modality_aware_labels.csv", "s2/dropped_labels.csv", "m1/test_metrics.json",
                "m3/test_metrics.json"):
        assert (out1 / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_zero_epochs_saves_the_initial_weights_as_epoch_0(tiny, tmp_path):
    # an untrained reference (and a start-up benchmark) that the next stage can load, and the
    # "saved ..." line is true: a checkpoint of epoch 0 is written, not none, nor an older one kept
    stdout = run("step1_train_base_model", ["--mode", "train", *paths(tiny), "--epochs", "0",
                                             "--model_save_dir", str(tmp_path)])
    assert f"saved {tmp_path}" in stdout
    ckpt = torch.load(tmp_path / "MMIL_Net.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["metrics"]["val"] is None and "seg_type" in ckpt["metrics"]["test"]
    torch.manual_seed(1)  # the seed the stage ran with, consumed by nothing before the network
    init = MMIL_Net().state_dict()
    assert all(torch.equal(init[k], v) for k, v in ckpt["model"].items())


def test_eval_mode_reproduces_training_metrics(tiny, ran):
    out, _ = ran
    stdout = run("step3_retrain", ["--mode", "test", *paths(tiny), "--model_save_dir", f"{out}/m3"])
    again = json.loads((out / "m3" / "test_metrics.json").read_text())
    ckpt = torch.load(out / "m3" / "MMIL_Net.pt", weights_only=True)
    for k, v in ckpt["metrics"]["test"].items():
        assert again[k] == pytest.approx(v, abs=1e-9)
    assert "stage3: test set" in stdout


# ----------------------------------------------------------------------------- network

def test_network_shapes_and_pooling():
    torch.manual_seed(0)
    net = MMIL_Net().eval()
    a, v, s = torch.randn(3, 10, 128), torch.rand(3, 80, 2048), torch.randn(3, 10, 512)
    out = net(a, v, s)
    assert out.frame_prob.shape == (3, 10, 2, 25)
    assert out.video_prob.shape == out.audio_prob.shape == out.visual_prob.shape == (3, 25)
    assert out.audio_feat.shape == out.visual_input.shape == (3, 10, 512)
    # attentive MMIL pooling by hand
    x = torch.stack([out.audio_feat, net.hat_encoder(out.visual_input, net.fc_a(a))], dim=2)
    p = torch.sigmoid(net.fc_prob(x))
    w_t = torch.softmax(net.fc_frame_att(x), dim=1)
    w_m = torch.softmax(net.fc_av_att(x), dim=2)
    assert torch.allclose(out.frame_prob, p, atol=1e-6)
    assert torch.allclose(out.audio_prob, (w_t * p)[:, :, 0].sum(1), atol=1e-6)
    assert torch.allclose(out.visual_prob, (w_t * p)[:, :, 1].sum(1), atol=1e-6)
    assert torch.allclose(out.video_prob, (w_t * p * w_m).sum((1, 2)), atol=1e-6)
    # probabilities: audio/visual are convex combinations of sigmoids, so within (0, 1)
    assert (out.audio_prob > 0).all() and (out.audio_prob < 1).all()


def test_early_and_late_frame_pooling_agree():
    torch.manual_seed(0)
    late = MMIL_Net(frame_pool="late").eval()
    early = MMIL_Net(frame_pool="early").eval()
    early.load_state_dict(late.state_dict())
    a, v, s = torch.randn(4, 10, 128), torch.rand(4, 80, 2048), torch.randn(4, 10, 512)
    o1, o2 = late(a, v, s), early(a, v, s)
    assert torch.allclose(o1.frame_prob, o2.frame_prob, atol=2e-5)
    pre = torch.from_numpy(np.ascontiguousarray(v.numpy().reshape(4, 10, 8, 2048).mean(2)))
    assert torch.allclose(early(a, pre, s).video_prob, o1.video_prob, atol=2e-5)
    # gradients of the two orders agree too
    for net in (late, early):
        net.zero_grad()
        net(a, v, s).video_prob.sum().backward()
    assert torch.allclose(late.fc_v.weight.grad, early.fc_v.weight.grad, atol=1e-5, rtol=1e-4)


def _inputs(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 10, 128, generator=g), torch.rand(b, 80, 2048, generator=g),
            torch.randn(b, 10, 512, generator=g))


def test_attention_without_averaging_its_unused_weights_is_bit_identical():
    """The layers pass average_attn_weights=False, which skips one reduction per attention call whose
    output nothing reads; outputs and gradients are those of the released call, bit for bit."""
    a, v, s = _inputs(b=8, seed=4)
    y = (torch.rand(8, 25, generator=torch.Generator().manual_seed(4)) < 0.2).float()
    seen, runs = [], []
    for released in (False, True):
        torch.manual_seed(0)
        net = MMIL_Net()  # dropout on: both runs draw the same masks from the same seed
        for m in (net.hat_encoder.cm_attn, net.hat_encoder.self_attn):
            def call(*args, _f=m.forward, **kw):
                seen.append(kw.get("average_attn_weights"))
                if released:  # as the released code calls it: the weights averaged over heads
                    kw.pop("average_attn_weights", None)
                return _f(*args, **kw)
            m.forward = call
        torch.manual_seed(1)
        out = net(a, v, s)
        loss, _ = mmil_loss(out, y, y, 0.9 * y + 0.05)
        loss.backward()
        runs.append((out, loss, [p.grad for p in net.parameters()]))
    assert seen == [False] * 8  # 2 layers x 2 modalities x 2 runs: the model asks for no averaging
    (o1, l1, g1), (o2, l2, g2) = runs
    assert all(torch.equal(getattr(o1, f), getattr(o2, f)) for f in o1._fields) and torch.equal(l1, l2)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))


def test_contrastive_target_and_loss():
    t = contrastive_target(10, 0.1, torch.zeros(1))
    assert torch.allclose(t.diagonal(), torch.full((10,), 0.9))
    assert torch.allclose(t[0, 1:], torch.full((9,), 0.1 / 9))
    assert torch.allclose(t.sum(1), torch.ones(10))
    # identical, orthogonal segment features: logits = 5 on the diagonal, 0 elsewhere
    eye = torch.eye(10).unsqueeze(0).repeat(2, 1, 1)
    feats = torch.cat([eye, torch.zeros(2, 10, 6)], dim=-1)  # (2, 10, 16)
    logz = np.log(np.exp(5.0) + 9.0)
    # released form: -log(0.9 p_pos + 9 * (0.1 / 9) p_neg)
    expected = logz - np.log(0.9 * np.exp(5.0) + 0.1)
    assert contrastive_loss(feats, feats, 0.2, 0.1).item() == pytest.approx(expected, rel=1e-5)
    # weight 0 gives the HAN loss (no contrastive term)
    net = MMIL_Net().eval()
    out = net(torch.randn(2, 10, 128), torch.rand(2, 10, 2048), torch.randn(2, 10, 512))
    y = torch.zeros(2, 25)
    y[0, 3] = 1
    l0, nce0 = mmil_loss(out, y, y, y, contrastive_weight=0)
    l1, nce1 = mmil_loss(out, y, y, y, contrastive_weight=1.0)
    assert nce0 is None and l1.item() == pytest.approx(l0.item() + nce1.item(), rel=1e-6)


# ----------------------------------------------------------------------------- stage 2 and 3 logic

def test_drop_rule_on_hand_made_probabilities():
    m = stage_module("step2_find_exchange", "estimators")
    ev = stage_module("step2_find_exchange", "model").Evidence
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float32)  # 4 videos, 2 classes
    # errors of (prob > 0.5) against the labels: audio class 0 misses video 3, class 1 misses video 1
    # -> 1/4 each, a_class = [1, 1]; visual class 0 misses video 3 (1/4), class 1 misses videos 1 and 2
    # (2/4) -> v_class = [0.5, 1]
    orig = {"audio_prob": np.array([[.9, .1], [.9, .2], [.1, .9], [.2, .1]]),
            "visual_prob": np.array([[.9, .1], [.8, .1], [.1, .2], [.1, .1]])}
    aud_sw = {"audio_prob": np.array([[.2, .0], [.9, .3], [.0, .6], [.2, .0]]),
              "visual_prob": np.array([[.2, .0], [.1, .4], [.0, .1], [.3, .0]])}
    vis_sw = {"audio_prob": np.array([[.4, .0], [.9, .1], [.0, .2], [.2, .0]]),
              "visual_prob": np.array([[.3, .0], [.2, .2], [.0, .6], [.1, .0]])}

    def rule(o, vis, aud):
        est = m.released(ev(None, labels, None, o, vis, aud, None), None, threshold_factor=0.5)
        return est.drop_audio, est.drop_visual, np.array(est.meta["a_class"]), np.array(est.meta["v_class"])

    drop_a, drop_v, a_class, v_class = rule(orig, vis_sw, aud_sw)
    assert np.allclose(a_class, [1.0, 1.0]) and np.allclose(v_class, [0.5, 1.0])
    # visual drop: aud-swapped visual AND audio prob < 0.5 * v_class (0.25 for c0, 0.5 for c1)
    assert drop_v.tolist() == [[True, False], [False, True], [False, False], [False, False]]
    # audio drop: vis-swapped audio AND visual prob < 0.5 * a_class (0.5 for both)
    assert drop_a.tolist() == [[True, False], [False, True], [False, False], [True, False]]
    # a class without error (scale 0) or a model without any error (NaN) never drops
    perfect = {"audio_prob": labels.astype(float), "visual_prob": labels.astype(float)}
    zero = {"audio_prob": np.zeros((4, 2)), "visual_prob": np.zeros((4, 2))}
    da, dv, ac, vc = rule(perfect, zero, zero)
    assert np.isnan(ac).all() and not da.any() and not dv.any()


def test_partners_share_no_class_and_are_seeded():
    d = stage_module("step2_find_exchange", "dataloader")
    rng = np.random.default_rng(0)
    labels = np.zeros((300, 25), dtype=np.float32)
    for i in range(300):
        labels[i, rng.choice(25, rng.integers(1, 4), replace=False)] = 1
    p1 = d.pick_partners(labels, seed=5)
    assert p1.shape == (1, 300)
    p1 = p1[0]
    assert ((labels * labels[p1]).sum(1) == 0).all() and (p1 != np.arange(300)).all()
    assert np.array_equal(p1, d.pick_partners(labels, seed=5)[0])
    assert not np.array_equal(p1, d.pick_partners(labels, seed=6)[0])
    # several draws: the first is the one-partner draw, every draw is valid, the draws differ
    p4 = d.pick_partners(labels, seed=5, draws=4)
    assert p4.shape == (4, 300) and np.array_equal(p4[0], p1)
    for row in p4:
        assert ((labels * labels[row]).sum(1) == 0).all() and (row != np.arange(300)).all()
    assert (p4[1] != p4[0]).mean() > 0.9
    with pytest.raises(Exception, match="no training video shares no class"):
        d.pick_partners(np.ones((3, 25), dtype=np.float32), seed=0, filenames=["a", "b", "c"])


def test_stage3_targets_and_quirk():
    d = stage_module("step3_retrain", "model")
    weak = np.array([[1, 1, 0]], dtype=np.float32)
    audio = np.array([[0, 1, 0]], dtype=np.float32)   # class 0 dropped from audio
    visual = np.array([[1, 0, 0]], dtype=np.float32)  # class 1 dropped from visual
    video, pa, pv = d.targets(weak, audio, visual, visual_smoothing=0.1, quirk=True)
    assert pa.tolist() == [[0, 1, 0]]
    assert np.allclose(pv, [[0.95, 0.05, 0.05]])
    assert video.tolist() == [[0, 1, 0]]          # quirk: the dropped audio label zeroes the video target
    video, _, _ = d.targets(weak, audio, visual, 0.1, quirk=False)
    assert video.tolist() == [[1, 1, 0]]
    _, _, pv0 = d.targets(weak, audio, visual, 0.1, quirk=True, smooth_dropped=False)
    assert np.allclose(pv0, [[0.95, 0.0, 0.05]])
    # nothing dropped: stage-3 targets equal stage-1 targets
    t3 = d.targets(weak, weak, weak, 0.1, quirk=True)
    t1 = stage_module("step1_train_base_model", "model").targets(weak, 0.1)
    assert all(np.allclose(a, b) for a, b in zip(t3, t1))


def test_stage1_targets():
    d = stage_module("step1_train_base_model", "model")
    y = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
    video, audio, visual = d.targets(y, 0.1)
    assert video.tolist() == audio.tolist() == y.tolist() and video is not audio
    assert np.allclose(visual, [[0.95, 0.05, 0.95], [0.05, 0.95, 0.05]]) and visual.dtype == np.float32
    assert np.allclose(d.targets(y, 0.0)[2], y) and np.allclose(d.targets(y, 1.0)[2], 0.5)


def test_stage2_drop_quality_overall_and_per_class():
    from avvp.report import drop_quality
    weak = np.zeros((4, 25), np.float32)
    weak[:, 0] = 1
    weak[:2, 1] = 1
    present = np.ones((4, 25), bool)
    present[[0, 1], 0] = False      # class 0 truly absent in videos 0, 1
    present[0, 1] = False           # class 1 truly absent in video 0
    drop = np.zeros((4, 25), bool)
    drop[[0, 2], 0] = True          # one right, one wrong
    drop[0, 1] = True               # right
    q = drop_quality(drop, weak, present)
    assert (q["dropped"], q["correct"], q["truly_absent"], q["weak_labels"]) == (3, 2, 3, 6)
    assert q["precision"] == pytest.approx(2 / 3) and q["recall"] == pytest.approx(2 / 3)
    assert q["f1"] == pytest.approx(2 / 3) and q["base_rate"] == pytest.approx(0.5)
    assert set(q["per_class"]) == {llp.CLASSES[0], llp.CLASSES[1]}
    c0, c1 = q["per_class"][llp.CLASSES[0]], q["per_class"][llp.CLASSES[1]]
    assert (c0["precision"], c0["recall"], c0["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c1["precision"], c1["recall"], c1["f1"], c1["base_rate"]) == pytest.approx((1.0, 1.0, 1.0, 0.5))
    assert "per_class" not in c0


def test_stage2_evidence_of_float32_probabilities_reads_back(tmp_path):
    """The evidence CSV holds the swapped and original probabilities (float32, to 6
    decimals) and the thresholds: written as short decimals, read back to the same float32 values."""
    import pandas as pd

    from conftest import STAGE2, load_stage_main
    s2 = load_stage_main(STAGE2)
    rng = np.random.default_rng(0)
    names = [f"vid{i:08d}_0_10" for i in range(6)]
    probs = lambda: {k: rng.random((6, 25), dtype=np.float32) for k in ("audio_prob", "visual_prob")}  # noqa: E731
    orig, vis, aud = probs(), probs(), probs()
    drop_a = np.zeros((6, 25), bool)
    drop_v = np.zeros((6, 25), bool)
    drop_a[1, 3] = drop_a[4, 0] = drop_v[2, 24] = True
    partner = np.array([3, 4, 5, 0, 1, 2])
    thr = np.linspace(0.1, 0.5, 25)
    per_drop = {"threshold": {"audio": np.broadcast_to(thr, (6, 25)), "visual": np.broadcast_to(thr / 2, (6, 25))}}

    def table_of(partners):
        ev = s2.model.Evidence(names, None, partners, orig, vis, aud, None)
        return s2.dataloader.dropped_table(ev, drop_a, drop_v, per_drop)

    two = table_of(np.stack([partner, partner[::-1]]))
    assert two["partner"].tolist() == [f"{names[4]} {names[1]}", f"{names[1]} {names[4]}", f"{names[5]} {names[0]}"]
    table = table_of(partner[None])
    llp.write_tsv(table, tmp_path / "e.csv")
    text = (tmp_path / "e.csv").read_text()
    back = pd.read_csv(tmp_path / "e.csv", sep="\t")
    assert list(back.columns) == ["filename", "event_label", "dropped", "partner", "swapped", "audio_prob_swapped",
                                  "visual_prob_swapped", "audio_prob_original", "visual_prob_original", "threshold"]
    assert back[["filename", "event_label", "dropped", "partner", "swapped"]].values.tolist() == [
        [names[1], llp.CLASSES[3], "audio", names[4], "visual"], [names[4], llp.CLASSES[0], "audio", names[1], "visual"],
        [names[2], llp.CLASSES[24], "visual", names[5], "audio"]]
    assert back["audio_prob_swapped"].tolist()[:2] == pytest.approx(
        [float(vis["audio_prob"][1, 3]), float(vis["audio_prob"][4, 0])], abs=5e-7)
    assert back["visual_prob_swapped"][2] == pytest.approx(float(aud["visual_prob"][2, 24]), abs=5e-7)
    assert back["visual_prob_original"][2] == pytest.approx(float(orig["visual_prob"][2, 24]), abs=5e-7)
    assert back["threshold"].tolist() == pytest.approx([thr[3], thr[0], thr[24] / 2], abs=5e-7)
    for col in ("audio_prob_swapped", "visual_prob_swapped", "audio_prob_original", "visual_prob_original"):
        got = back[col].to_numpy().astype(np.float32)
        assert np.array_equal(got, table[col].to_numpy()), col      # the float32 values, exactly
    cells = [c for line in text.splitlines()[1:] for c in line.split("\t")[5:]]
    assert all(len(c.split(".")[1]) <= 6 for c in cells if "." in c), cells  # short decimals, not float64 noise
