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
