"""Stage 2's estimator options on a real (tiny) stage-1 model: several partners per video and the
class error measured on the val split; the released defaults unchanged by them."""
import json

import numpy as np
import pandas as pd

from avvp import llp
from conftest import STAGE2, call_stage


def estimate(tiny_llp, stage1_out, tmp_path, name, *flags):
    out_dir = tmp_path / name
    args = ["--device", "cpu", *tiny_llp.args(), "--model_save_dir", stage1_out / "models_step1",
            "--output_dir", out_dir, *flags,
            "--train_truth_audio", tiny_llp.data / "synthetic_train_eval_audio.csv",
            "--train_truth_visual", tiny_llp.data / "synthetic_train_eval_visual.csv"]
    code, out, err = call_stage(STAGE2, args, tmp_path)
    assert code == 0, err
    meta = json.loads((out_dir / "estimate_meta.json").read_text())
    evidence = pd.read_csv(out_dir / "dropped_labels.csv", sep="\t")
    return out, meta, evidence, llp.read_modality_labels(out_dir / "modality_aware_labels.csv")


def test_partners_and_val_error_scale(tiny_llp, stage1_out, tmp_path):
    out1, meta1, ev1, labels1 = estimate(tiny_llp, stage1_out, tmp_path, "released")
    out3, meta3, ev3, labels3 = estimate(tiny_llp, stage1_out, tmp_path, "k3", "--partners", "3")
    assert "1 partner(s) each" in out1 and "3 partner(s) each" in out3
    assert meta3["args"]["partners"] == 3 and meta1["args"]["partners"] == 1
    # the per-class error scale is stage 1's on the original inputs: the partners do not change it
    assert meta3["v_class"] == meta1["v_class"]
    # every dropped label names its 3 partners, each sharing no class with the video
    train = llp.read_weak(tiny_llp.data / "AVVP_train.csv")
    sets = {f: set(np.flatnonzero(row)) for f, row in zip(train.filenames, train.labels)}
    assert len(ev3)
    for video, partners in zip(ev3["filename"], ev3["partner"]):
        names = partners.split(" ")
        assert len(names) == 3 and all(p != video and not sets[p] & sets[video] for p in names)
    # the first of the 3 partners is the released single partner (one generator, drawn in order)
    first = dict(zip(ev3["filename"], ev3["partner"].str.split(" ").str[0]))
    single = dict(zip(ev1["filename"], ev1["partner"]))
    shared = set(first) & set(single)
    assert shared and all(first[f] == single[f] for f in shared)

    outv, metav, _, _ = estimate(tiny_llp, stage1_out, tmp_path, "val", "--error_scale", "val")
    # the val split's error scale differs from the train one (stage 1 has not seen val videos)
    assert metav["v_class"] != meta1["v_class"]
    assert max(x for x in metav["v_class"] if x == x) == 1.0   # normalised by its maximum

    # scores against truth: overall and per class, F1 consistent with precision and recall
    for meta in (meta1, meta3, metav):
        for kind in ("audio", "visual"):
            q = meta["quality"][kind]
            assert q["dropped"] == sum(c["dropped"] for c in q["per_class"].values())
            assert q["truly_absent"] == sum(c["truly_absent"] for c in q["per_class"].values())
            if q["dropped"] and q["correct"]:
                p, r = q["precision"], q["recall"]
                assert abs(q["f1"] - 2 * p * r / (p + r)) < 1e-9
    assert "per class:" in out1 and "  visual " in out1


def test_joint_drops_by_hand():
    import torch
    from conftest import STAGE3, load_stage_main
    load_stage_main(STAGE3)
    import denoise
    # one class, 5 labelled videos and one without the label; visual losses high for 0, 1, 2,
    # audio losses low for 1, 2, 3: with ratio 0.4, n = floor(0.4 * 5) = 2, so the two largest
    # visual losses (0, 1) meet the two smallest audio losses (1, 2) at video 1 only
    loss_v = torch.tensor([[5.0], [4.0], [3.0], [0.1], [0.2], [9.0]])
    loss_a = torch.tensor([[3.0], [0.1], [0.2], [0.3], [4.0], [0.0]])
    pos = torch.tensor([[True], [True], [True], [True], [True], [False]])
    ratio = torch.tensor([0.4])
    drop_a, drop_v = denoise.joint_drops(loss_a, loss_v, pos, torch.tensor([0.0]), ratio)
    assert drop_v[:, 0].tolist() == [False, True, False, False, False, False]
    assert not drop_a.any()
    # audio, roles swapped: largest audio losses 4, 0; smallest visual losses 3, 4 -> video 4
    drop_a, drop_v = denoise.joint_drops(loss_a, loss_v, pos, ratio, torch.tensor([0.0]))
    assert drop_a[:, 0].tolist() == [False, False, False, False, True, False] and not drop_v.any()
    ra, rv = denoise.drop_ratios(np.array([[1, 1], [1, 0]]), np.array([[0, 1], [1, 0]]), np.array([[1, 0], [0, 0]]))
    assert ra.tolist() == [0.5, 0.0] and rv.tolist() == [0.5, 1.0]


def test_stage3_joint_denoising(tiny_llp, stage1_out, tmp_path):
    from conftest import STAGE3
    _, meta, _, (names, weak, audio, visual) = estimate(tiny_llp, stage1_out, tmp_path, "released")
    out_dir = tmp_path / "m3"
    code, out, err = call_stage(STAGE3, ["--mode", "retrain", "--device", "cpu", *tiny_llp.args(), "--epochs", "2",
                                         "--label_ma", tmp_path / "released" / "modality_aware_labels.csv",
                                         "--model_save_dir", out_dir, "--denoise", "joint"], tmp_path)
    assert code == 0, err
    assert "--denoise joint: training on the weak labels" in out
    n2, w2, a2, v2 = llp.read_modality_labels(out_dir / "denoised_labels.csv")
    order = [n2.index(f) for f in names]
    w2, a2, v2 = w2[order], a2[order], v2[order]
    assert (w2 == weak).all()
    y = weak > 0
    da, dv = y & (a2 == 0), y & (v2 == 0)
    # per class at most stage 2's share of drops goes: floor(ratio * labels of the class)
    for kind, d, kept in (("audio", da, audio), ("visual", dv, visual)):
        cap = np.floor((y & (kept == 0)).sum(axis=0) / np.maximum(y.sum(axis=0), 1) * y.sum(axis=0) + 1e-9)
        assert (d.sum(axis=0) <= cap).all(), kind
    assert f"{int(da.sum())} audio and {int(dv.sum())} visual dropped" in out
    assert int(dv.sum()) > 0 or meta["quality"]["visual"]["dropped"] == 0
