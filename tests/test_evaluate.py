"""Tests of avvp.evaluate: the LLP protocol against its plain reference (avvp/evaluate_reference.py), hand-computed cases, CLI, real files."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from avvp import evaluate as E
from avvp.evaluate_reference import event_counts, llp_scores as ref_scores, segment_counts
from avvp.llp import CLASSES, CLASS_INDEX, MalformedRowWarning, read_dense, read_dense_matrix, read_weak
from avvp.errors import AVVPError
from conftest import llp_file

REPO = Path(__file__).resolve().parents[1]
KEYS = ["seg_a", "seg_v", "seg_av", "seg_type", "seg_event", "evt_a", "evt_v", "evt_av", "evt_type", "evt_event"]


# ----------------------------------------------------------------------------- random LLP-like videos

def random_matrix(rng):
    """One (25, 10) 0/1 matrix, from a mix of regimes."""
    m = np.zeros((25, 10), dtype=np.uint8)
    mode = rng.integers(0, 7)
    if mode == 0:                               # empty
        return m
    if mode == 1:                               # everything on
        m[:] = 1
        return m
    classes = rng.choice(25, size=rng.integers(1, 4), replace=False)
    for c in classes:
        kind = rng.integers(0, 5)
        if kind == 0:                           # many short runs
            m[c] = rng.random(10) < 0.5
        elif kind == 1:                         # alternating
            m[c, rng.integers(0, 2)::2] = 1
        elif kind == 2:                         # events at the edges
            m[c, 0] = rng.random() < 0.7
            m[c, 9] = rng.random() < 0.7
        else:                                   # 1-3 intervals
            for _ in range(rng.integers(1, 4)):
                on = rng.integers(0, 10)
                m[c, on:rng.integers(on + 1, 11)] = 1
    return m


def perturb(m, rng):
    """A prediction close to the truth: shifts, grows, shrinks, flips, drops, extra classes."""
    p = m.copy()
    for c in range(25):
        r = rng.random()
        if r < 0.25:
            p[c] = np.roll(p[c], rng.choice([-1, 1]))
        elif r < 0.35:
            p[c] = p[c] | np.roll(p[c], 1)
        elif r < 0.45:
            p[c] = p[c] & np.roll(p[c], 1)
        elif r < 0.55:
            p[c] ^= (rng.random(10) < 0.15).astype(np.uint8)
        elif r < 0.6:
            p[c] = 0
    if rng.random() < 0.3:
        c = rng.integers(0, 25)
        on = rng.integers(0, 10)
        p[c, on:rng.integers(on + 1, 11)] = 1
    return p


def random_set(n, seed):
    rng = np.random.default_rng(seed)
    GA = np.stack([random_matrix(rng) for _ in range(n)])
    GV = np.stack([random_matrix(rng) if rng.random() < 0.5 else perturb(GA[i], rng) for i in range(n)])
    PA = np.stack([perturb(GA[i], rng) if rng.random() < 0.7 else random_matrix(rng) for i in range(n)])
    PV = np.stack([perturb(GV[i], rng) if rng.random() < 0.7 else random_matrix(rng) for i in range(n)])
    return PA, PV, GA, GV


def assert_scores(got, want, tol=1e-6):
    assert list(got) == KEYS
    for k in KEYS:
        assert isinstance(got[k], float), k
        assert got[k] == pytest.approx(want[k], abs=tol), (k, got[k], want[k])


# ----------------------------------------------------------------------------- helpers for hand cases

def video(**events):
    """video(a={'Speech': [(0, 4)]}, v={...}) -> (25, 10) audio and visual matrices."""
    out = []
    for kind in ("a", "v"):
        m = np.zeros((25, 10), dtype=np.uint8)
        for name, spans in events.get(kind, {}).items():
            for on, off in spans:
                m[CLASS_INDEX[name], on:off] = 1
        out.append(m)
    return out


def score_one(pred, truth):
    (pa, pv), (ga, gv) = pred, truth
    return E.llp_scores(pa[None], pv[None], ga[None], gv[None])


def expect(**kw):
    """Full expected dict: 100 unless given; type = mean of a, v, av."""
    d = {k: 100.0 for k in KEYS}
    d.update(kw)
    for lv in ("seg", "evt"):
        if f"{lv}_type" not in kw:
            d[f"{lv}_type"] = (d[f"{lv}_a"] + d[f"{lv}_v"] + d[f"{lv}_av"]) / 3
    return d


# ----------------------------------------------------------------------------- randomized comparison

def test_random_videos_match_loop_reference():
    PA, PV, GA, GV = random_set(500, seed=0)
    # the mix does contain the extreme cases
    assert (GA.reshape(500, -1).sum(1) == 0).any() and (GA.reshape(500, -1).sum(1) == 250).any()
    assert GA[:, :, 0].any() and GA[:, :, 9].any()
    assert_scores(E.llp_scores(PA, PV, GA, GV), ref_scores(PA, PV, GA, GV))


def test_random_single_videos_match_loop_reference():
    # per-video equality (an error cannot average out across videos)
    PA, PV, GA, GV = random_set(120, seed=1)
    for i in range(len(PA)):
        got = E.llp_scores(PA[i:i + 1], PV[i:i + 1], GA[i:i + 1], GV[i:i + 1])
        assert_scores(got, ref_scores(PA[i:i + 1], PV[i:i + 1], GA[i:i + 1], GV[i:i + 1]))


def test_every_pair_of_single_runs_matches_reference():
    # all 55 x 55 (pred run, true run) pairs of one class: exercises every IoU boundary
    spans = [(a, b) for a in range(10) for b in range(a + 1, 11)]
    n = len(spans)
    PA = np.zeros((n * n, 25, 10), np.uint8)
    GA = np.zeros_like(PA)
    for i, (pa, pb) in enumerate(spans):
        for j, (ga, gb) in enumerate(spans):
            PA[i * n + j, 3, pa:pb] = 1
            GA[i * n + j, 3, ga:gb] = 1
    pc, gc = E._codes(PA.astype(bool)), E._codes(GA.astype(bool))
    evt, seg = E._event_counts(pc, gc), E._segment_counts(pc, gc)
    for k in range(n * n):
        p, g = PA[k, 3].tolist(), GA[k, 3].tolist()
        assert (evt[0][k, 3], evt[1][k, 3], evt[2][k, 3]) == event_counts(p, g), (p, g)
        assert (seg[0][k, 3], seg[1][k, 3], seg[2][k, 3]) == segment_counts(p, g), (p, g)
    assert (evt[0][:, np.arange(25) != 3] == 0).all()


def test_input_types_give_same_scores():
    PA, PV, GA, GV = random_set(40, seed=2)
    want = E.llp_scores(PA, PV, GA, GV)
    for conv in (lambda x: x.astype(bool), lambda x: x.astype(np.int64), lambda x: x.astype(np.float32),
                 lambda x: torch.from_numpy(x.astype(np.float32))):
        assert E.llp_scores(*(conv(x) for x in (PA, PV, GA, GV))) == want


def test_bad_inputs_raise():
    z = np.zeros((2, 25, 10), np.uint8)
    with pytest.raises(AVVPError, match="shape"):
        E.llp_scores(z[:, :, :9], z, z, z)
    with pytest.raises(AVVPError, match="videos"):
        E.llp_scores(z, z[:1], z, z)
    with pytest.raises(AVVPError, match="other than 0 and 1"):
        E.llp_scores(z + 0.7, z, z, z)
    with pytest.raises(AVVPError, match="no videos"):
        E.llp_scores(z[:0], z[:0], z[:0], z[:0])


# ----------------------------------------------------------------------------- hand-computed cases

def test_empty_video_scores_100():
    assert_scores(score_one(video(), video()), expect())


def test_speech_0_3_predicted_0_1():
    # segment: TP 2, FP 0, FN 2 -> 4 / 6; event: IoU 2/4 = 0.5 -> TP, true run matched -> F 1
    got = score_one(video(a={"Speech": [(0, 2)]}), video(a={"Speech": [(0, 4)]}))
    assert_scores(got, expect(seg_a=400 / 6, seg_event=400 / 6))
    assert got["seg_type"] == pytest.approx((200 / 3 + 200) / 3)     # 88.888...


def test_iou_below_half_is_fp_and_fn():
    # pred [0,1) vs truth [0,4): IoU 1/4; segment F = 2/(2+3) = 0.4
    got = score_one(video(a={"Speech": [(0, 1)]}), video(a={"Speech": [(0, 4)]}))
    assert_scores(got, expect(seg_a=40.0, seg_event=40.0, evt_a=0.0, evt_event=0.0))
    assert got["evt_type"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("pred,truth,evt,seg", [
    ((1, 4), (0, 3), 100.0, 400 / 6),    # inter 2, union 4: exactly 0.5 -> TP
    ((3, 7), (4, 6), 100.0, 400 / 6),    # prediction twice as long: exactly 0.5
    ((2, 5), (0, 3), 0.0, 200 / 6),      # inter 1, union 5
    ((3, 8), (4, 6), 0.0, 400 / 7),      # inter 2, union 5: 0.4
    ((0, 5), (5, 10), 0.0, 0.0),         # adjacent, no overlap
])
def test_iou_boundary(pred, truth, evt, seg):
    got = score_one(video(v={"Dog": [pred]}), video(v={"Dog": [truth]}))
    assert_scores(got, expect(seg_v=seg, seg_event=seg, evt_v=evt, evt_event=evt))


def test_event_at_last_segment_only():
    truth = video(v={"Dog": [(9, 10)]})
    assert_scores(score_one(video(v={"Dog": [(9, 10)]}), truth), expect())
    # pred [8,10): segment 2/3; event IoU 1/2 -> TP
    assert_scores(score_one(video(v={"Dog": [(8, 10)]}), truth), expect(seg_v=200 / 3, seg_event=200 / 3))
    # nothing predicted
    assert_scores(score_one(video(), truth), expect(seg_v=0.0, seg_event=0.0, evt_v=0.0, evt_event=0.0))
    # audio and visual both at segment 9 -> audio-visual event at segment 9 only
    both = video(a={"Dog": [(9, 10)]}, v={"Dog": [(0, 10)]})
    got = score_one(video(a={"Dog": [(9, 10)]}, v={"Dog": [(9, 10)]}), both)
    # v: TP 1, FN 9 -> 2/11; evt v: IoU 1/10 -> FP 1, FN 1 -> 0; av: exact
    # event pooled: seg TP 2, FN 9 -> 4/13; evt TP 1 (a), FP 1, FN 1 -> 2/4
    assert_scores(got, expect(seg_v=200 / 11, seg_event=400 / 13, evt_v=0.0, evt_event=50.0))


def test_all_positive_predictions():
    ones = np.ones((25, 10), np.uint8)
    got = score_one((ones, ones), video(a={"Speech": [(0, 10)]}))
    # a: Speech F 1, 24 classes F 0 -> 1/25; v and av: all FP -> 0
    # event pooled, Speech: TP 10, FP 10 (visual) -> 2/3; others 0 -> (2/3)/25; same at event level
    want = expect(seg_a=4.0, seg_v=0.0, seg_av=0.0, seg_event=200 / 75,
                  evt_a=4.0, evt_v=0.0, evt_av=0.0, evt_event=200 / 75)
    assert_scores(got, want)
    assert got["seg_type"] == pytest.approx(4 / 3)


def test_event_pooling_and_audio_visual():
    truth = video(a={"Speech": [(0, 4)], "Dog": [(5, 10)]}, v={"Dog": [(0, 10)]})
    pred = video(a={"Speech": [(0, 2), (3, 4)]}, v={"Dog": [(0, 5)]})
    got = score_one(pred, truth)
    want = expect(
        seg_a=100 * (6 / 7) / 2,            # Speech TP3 FN1 -> 6/7, Dog FN5 -> 0
        seg_v=100 * 10 / 15,                # Dog TP5 FN5
        seg_av=0.0,                         # truth av Dog [5,10), nothing predicted
        seg_event=100 * (6 / 7 + 0.5) / 2,  # Speech 6/7; Dog pooled TP5 FN10 -> 10/20
        evt_a=100 / 3,                      # Speech: [0,2) TP, [3,4) FP -> 2/3; Dog FN -> 0
        evt_v=100.0,                        # [0,5) vs [0,10): IoU 0.5
        evt_av=0.0,
        evt_event=200 / 3,                  # Speech TP1 FP1 -> 2/3; Dog TP1 FN1 -> 2/3
    )
    assert_scores(got, want)
    assert got["seg_type"] == pytest.approx(36.507936507936)
    assert got["evt_type"] == pytest.approx(44.444444444444)
    # pooling is not the mean of the audio and visual F
    assert got["seg_event"] != pytest.approx((got["seg_a"] + got["seg_v"]) / 2)


def test_dataset_score_is_mean_over_videos():
    vids = [(video(a={"Speech": [(0, 2)]}), video(a={"Speech": [(0, 4)]})),
            (video(), video()),
            (video(a={"Speech": [(0, 1)]}), video(a={"Speech": [(0, 4)]}))]
    PA, PV = (np.stack([p[k] for p, _ in vids]) for k in (0, 1))
    GA, GV = (np.stack([t[k] for _, t in vids]) for k in (0, 1))
    got = E.llp_scores(PA, PV, GA, GV)
    assert got["seg_a"] == pytest.approx((400 / 6 + 100 + 40) / 3)
    assert got["evt_a"] == pytest.approx((100 + 100 + 0) / 3)
    assert got["seg_v"] == 100.0


# ----------------------------------------------------------------------------- predict_segments

def test_predict_segments_thresholds():
    n = 2
    frame = np.zeros((n, 10, 2, 25), np.float32)
    a_prob = np.zeros((n, 25), np.float32)
    v_prob = np.zeros((n, 25), np.float32)
    frame[0, 9, 0, 3] = 0.5          # inclusive
    frame[0, 8, 0, 3] = 0.4999
    a_prob[0, 3] = 0.5
    frame[0, 0, 0, 4] = 0.9          # gated off by the video-level prob
    a_prob[0, 4] = 0.49
    frame[1, 2, 1, 7] = 0.7          # visual
    frame[1, 2, 0, 7] = 0.7          # audio segment on but audio video prob low
    v_prob[1, 7] = 0.95
    a_prob[1, 7] = 0.1
    pa, pv = E.predict_segments(frame, a_prob, v_prob)
    assert pa.shape == pv.shape == (n, 25, 10) and pa.dtype == pv.dtype == np.uint8
    want_a = np.zeros((n, 25, 10), np.uint8)
    want_a[0, 3, 9] = 1
    want_v = np.zeros((n, 25, 10), np.uint8)
    want_v[1, 7, 2] = 1
    np.testing.assert_array_equal(pa, want_a)
    np.testing.assert_array_equal(pv, want_v)
    # torch tensors give the same result
    ta, tv = E.predict_segments(torch.from_numpy(frame), torch.from_numpy(a_prob), torch.from_numpy(v_prob))
    np.testing.assert_array_equal(ta, want_a)
    np.testing.assert_array_equal(tv, want_v)
    with pytest.raises(AVVPError, match="frame_prob"):
        E.predict_segments(frame[:, :, 0], a_prob, v_prob)
    with pytest.raises(AVVPError, match="v_prob"):
        E.predict_segments(frame, a_prob, v_prob[:1])


def test_predict_segments_matches_elementwise_rule():
    rng = np.random.default_rng(3)
    frame = rng.random((5, 10, 2, 25))
    ap, vp = rng.random((5, 25)), rng.random((5, 25))
    pa, pv = E.predict_segments(frame, ap, vp)
    for i, c, t in [(0, 0, 0), (4, 24, 9), (2, 11, 5), (3, 7, 1)]:
        assert pa[i, c, t] == int(frame[i, t, 0, c] >= 0.5 and ap[i, c] >= 0.5)
        assert pv[i, c, t] == int(frame[i, t, 1, c] >= 0.5 and vp[i, c] >= 0.5)
    assert (pa.astype(bool) == ((frame[:, :, 0, :] >= 0.5) & (ap[:, None] >= 0.5)).transpose(0, 2, 1)).all()


# ----------------------------------------------------------------------------- per-class view and table

def test_per_class_segment_f():
    GA = np.zeros((2, 25, 10), np.uint8)
    PA = np.zeros_like(GA)
    GV = np.zeros_like(GA)
    PV = np.zeros_like(GA)
    s, d = CLASS_INDEX["Speech"], CLASS_INDEX["Dog"]
    GA[0, s, 0:4] = 1      # pooled Speech audio: TP 2 + 3, FP 1, FN 2 + 0
    PA[0, s, 0:2] = 1
    GA[1, s, 5:8] = 1
    PA[1, s, 4:8] = 1
    GV[0, s, 0:10] = 1     # Speech visual: TP 4, FN 6; av truth {0..3, }, av pred {0,1}
    PV[0, s, 0:4] = 1
    PV[1, d, 0:3] = 1      # Dog visual: FP only -> 0
    df = E.per_class_segment_f(PA, PV, GA, GV)
    assert list(df.columns) == ["f_a", "f_v", "f_av"] and list(df.index) == CLASSES
    assert df.loc["Speech", "f_a"] == pytest.approx(100 * 10 / 13)
    assert df.loc["Speech", "f_v"] == pytest.approx(100 * 8 / 14)
    assert df.loc["Speech", "f_av"] == pytest.approx(100 * 4 / 6)   # truth av 0..3, pred av 0..1
    assert df.loc["Dog", "f_v"] == 0.0 and np.isnan(df.loc["Dog", "f_a"])
    assert df.drop(index=["Speech", "Dog"]).isna().all().all()


def test_format_table():
    m = expect(seg_a=60.1, seg_v=52.9, seg_av=48.9, seg_event=55.4, evt_a=51.3, evt_v=48.9, evt_av=43.0,
               evt_event=48.0)
    text = E.format_table(m, title="HAN")
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0] == "HAN"
    for head in ("Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV"):
        assert head in lines[1]
    assert lines[2].startswith("Segment-level") and lines[3].startswith("Event-level")
    assert lines[2].split()[1:] == ["60.10", "52.90", "48.90", f"{(60.1 + 52.9 + 48.9) / 3:.2f}", "55.40"]
    assert lines[3].split()[1:] == ["51.30", "48.90", "43.00", f"{(51.3 + 48.9 + 43.0) / 3:.2f}", "48.00"]
    assert len(E.format_table(m).splitlines()) == 3


# ----------------------------------------------------------------------------- files and CLI

NAMES = ["aaaaaaaaaaa_0_10", "bbbbbbbbbbb_10_20", "ccccccccccc_20_30"]


def write(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def small_files(tmp_path):
    a, b, c = NAMES
    dense = ["filename", "onset", "offset", "event_labels"]
    files = {
        "label": write(tmp_path / "split.csv", ["filename", "event_labels"],
                       [(a, "Speech"), (b, "Dog"), (c, "Cat")]),
        "eval_audio": write(tmp_path / "ea.csv", dense, [
            (a, 0, 4, "Speech"), (a, 2, 6, "Speech"), (a, 0, 4, "Speech"),   # overlap + duplicate: one run [0,6)
            (b, 9, 10, "Dog"), (c, 5, 5, "Cat")]),                           # empty row marks nothing
        "eval_visual": write(tmp_path / "ev.csv", dense, [(b, 9, 10, "Dog")]),
        "pred_audio": write(tmp_path / "pa.csv", dense, [(a, 0, 3, "Speech"), (b, 9, 10, "Dog")]),
        "pred_visual": write(tmp_path / "pv.csv", dense, [(b, 8, 10, "Dog"), ("zzzzzzzzzzz_0_10", 0, 10, "Car")]),
    }
    return files


# a: seg 6/9, event IoU 3/6 -> 1;  b: v seg 2/3, event pooled Dog TP2 FP1 -> 4/5;  c: nothing -> 1
SMALL_WANT = expect(seg_a=100 * (2 / 3 + 2) / 3, seg_v=100 * (2 / 3 + 2) / 3,
                    seg_event=100 * (2 / 3 + 0.8 + 1) / 3)


def test_evaluate_files_overlap_duplicate_rows(small_files):
    got = E.evaluate_files(*(small_files[k] for k in ("label", "eval_audio", "eval_visual", "pred_audio",
                                                      "pred_visual")))
    assert_scores(got, SMALL_WANT)
    gt = read_dense_matrix(small_files["eval_audio"], NAMES)
    assert gt[0, CLASS_INDEX["Speech"]].tolist() == [1] * 6 + [0] * 4
    assert gt[2].sum() == 0


def test_cli_json_end_to_end(small_files):
    args = [sys.executable, "-m", "avvp.evaluate"]
    for k in ("label", "eval_audio", "eval_visual", "pred_audio", "pred_visual"):
        args += [f"--{k}", str(small_files[k])]
    r = subprocess.run(args + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert_scores(got, SMALL_WANT)


def test_cli_table_and_bad_class(small_files, capsys):
    argv = []
    for k in ("label", "eval_audio", "eval_visual", "pred_audio", "pred_visual"):
        argv += [f"--{k}", str(small_files[k])]
    assert E.main(argv) == 0
    out = capsys.readouterr().out
    assert "Segment-level" in out and f"{SMALL_WANT['seg_event']:.2f}" in out

    bad = write(small_files["pred_audio"].with_name("bad.csv"), ["filename", "onset", "offset", "event_labels"],
                [(NAMES[0], 0, 3, "Speach")])
    argv_bad = [x if x != str(small_files["pred_audio"]) else str(bad) for x in argv]
    with pytest.raises(SystemExit) as e:
        E.main(argv_bad + ["--json"])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Speach" in err[0] and "line 2" in err[0]


def test_predictions_of_wrong_split_warn(small_files, tmp_path):
    other = write(tmp_path / "other.csv", ["filename", "onset", "offset", "event_labels"],
                  [("ddddddddddd_0_10", 0, 3, "Speech")])
    with pytest.warns(UserWarning, match="wrong split"):
        got = E.evaluate_files(small_files["label"], small_files["eval_audio"], small_files["eval_visual"],
                               other, small_files["pred_visual"])
    assert got["seg_a"] < 100


# ----------------------------------------------------------------------------- real LLP files

def test_real_test_split_truth_against_itself():
    split, ea, ev = (llp_file(n) for n in ("AVVP_test_pd.csv", "AVVP_eval_audio.csv", "AVVP_eval_visual.csv"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = E.evaluate_files(split, ea, ev, ea, ev)
    # LLP's audio truth holds one row that marks nothing (8DF2PxdT5tE_390_400, onset 9, offset 0): said
    # once per read, nothing else
    assert {str(w.message).split(": ", 1)[1] for w in caught} == {"1 row(s) with onset > offset mark no segment, "
                                                                   "line(s) 3770"}
    assert got == {k: 100.0 for k in KEYS}
    # and a degraded prediction scores less, consistently with the loop reference on a sample
    names = read_weak(split).filenames
    ga, gv = read_dense_matrix(ea, names), read_dense_matrix(ev, names)
    pa = np.roll(ga, 1, axis=2)
    got = E.llp_scores(pa, gv, ga, gv)
    assert got["seg_a"] < 100 and got["seg_v"] == 100.0
    sl = slice(0, 150)
    assert_scores(E.llp_scores(pa[sl], gv[sl], ga[sl], gv[sl]), ref_scores(pa[sl], gv[sl], ga[sl], gv[sl]))


def test_real_malformed_2021_audio_file():
    bad_path, clean_path = llp_file("AVVP_eval_audio_malformed_2021.csv"), llp_file("AVVP_eval_audio.csv")
    names = read_weak(llp_file("AVVP_test_pd.csv")).filenames + read_weak(llp_file("AVVP_val_pd.csv")).filenames
    with pytest.warns(MalformedRowWarning, match=r"line\(s\) 930, 931, 2449$"):
        bad = read_dense(bad_path)
    assert 930 not in bad["line"].tolist() and 2449 not in bad["line"].tolist()
    clean = read_dense_matrix(clean_path, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowWarning)
        malformed = read_dense_matrix(bad_path, names)
    differ = sorted(np.asarray(names)[(clean != malformed).any(axis=(1, 2))].tolist())
    assert differ == ["JfZEqeLZqWk_30_40", "KvIjsmANkxI_10_20"]
    i, j = names.index("JfZEqeLZqWk_30_40"), names.index("KvIjsmANkxI_10_20")
    sp, cat = CLASS_INDEX["Speech"], CLASS_INDEX["Cat"]
    assert clean[i, sp].tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 1] and malformed[i, sp].sum() == 0
    assert clean[j, cat, 0] == 1 and malformed[j, cat, 0] == 0
    assert (np.delete(clean[j], cat, 0) == np.delete(malformed[j], cat, 0)).all()
