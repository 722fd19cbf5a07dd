"""The estimators on real (tiny) runs: stage 2's partners, the val-calibrated drop rule and the
plug-in registry, the cross-fitting folds of stages 1 and 2, stage 3's joint denoising, and
--recipe; the released defaults unchanged by them."""
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


def test_partners(tiny_llp, stage1_out, tmp_path):
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

    assert max(x for x in meta1["v_class"] if x == x) == 1.0   # normalised by its maximum
    # the released rule reports its threshold at each drop: factor 0.5 * the class's scale
    scale = dict(zip(llp.CLASSES, meta1["a_class"]))
    rows = ev1[ev1["dropped"] == "audio"]
    assert len(rows) and np.allclose(rows["threshold"], [0.5 * scale[c] for c in rows["event_label"]], atol=1e-6)

    # scores against truth: overall and per class, F1 consistent with precision and recall
    for meta in (meta1, meta3):
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
    denoise = load_stage_main(STAGE3).denoise
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
    # stage 2 drops labels here, so the joint rule has a share to fill and drops some in each modality
    assert meta["quality"]["visual"]["dropped"] > 0 and meta["quality"]["audio"]["dropped"] > 0
    assert dv.sum() > 0 and da.sum() > 0


def test_cross_fitting_folds(tiny_llp, stage1_out, tmp_path):
    import torch
    from conftest import STAGE1, STAGE2, load_stage_main
    models = tmp_path / "m1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as stage1_out was trained, so that the base models compare bit for bit
    try:
        code, out, err = call_stage(STAGE1, ["--mode", "train", "--device", "cpu", "--batch-size", "16",
                                             *tiny_llp.args(), "--epochs", "1", "--folds", "2",
                                             "--model_save_dir", models], tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    # --folds leaves the base model as it was, and adds two models that each held out half the train videos
    base = torch.load(stage1_out / "models_step1" / "MMIL_Net.pt", weights_only=True)["model"]
    again = torch.load(models / "MMIL_Net.pt", weights_only=True)["model"]
    assert all(torch.equal(base[k], again[k]) for k in base)
    folds = [torch.load(models / f"fold{k}of2" / "MMIL_Net.pt", weights_only=True) for k in (1, 2)]
    held = [f["fold"]["heldout"] for f in folds]
    train = llp.read_weak(tiny_llp.data / "AVVP_train.csv")
    assert sorted(held[0] + held[1]) == sorted(train.filenames) and len(held[0]) == len(train.filenames) // 2
    assert "stage1 fold 2/2: training on 16 videos, 16 held out" in out
    assert not torch.equal(folds[0]["model"]["fc_prob.weight"], folds[1]["model"]["fc_prob.weight"])

    # stage 2 reads each video with the model that never trained on it
    flags = ["--device", "cpu", *tiny_llp.args(), "--model_save_dir", models]
    code, out, err = call_stage(STAGE2, [*flags, "--folds", "2", "--output_dir", tmp_path / "s2"], tmp_path)
    assert code == 0, err
    meta = json.loads((tmp_path / "s2" / "estimate_meta.json").read_text())
    assert [p.split("/")[-2] for p in meta["fold_checkpoints"]] == ["fold1of2", "fold2of2"]
    assert meta["checkpoint"] is None
    s2 = load_stage_main(STAGE2)
    s2_data, s2_model = s2.dataloader, s2.model
    from avvp import config, data
    args = s2.get_args([str(a) for a in flags])
    device = torch.device("cpu")
    split = data.load_split(config.feature_source(args), args.label_train, device, name="train")
    partners = s2_data.pick_partners(split.labels, 1, split.filenames)
    nets = s2_model.load_models(models, "MMIL_Net.pt", 2, device)
    mixed = s2_model.swap_evidence(nets, split, partners, 256, out_of_fold=True)
    own = [s2_model.swap_evidence([m], split, partners, 256) for m in nets]
    for j, names in enumerate(held):
        rows = [split.filenames.index(n) for n in names]
        for r in ("orig", "vis_swapped", "aud_swapped"):
            # its own model's probs, up to the float rounding of another batch composition (1e-7 seen) ...
            mine, other = (getattr(own[i], r)["visual_prob"][rows] for i in (j, 1 - j))
            got = getattr(mixed, r)["visual_prob"][rows]
            assert np.abs(got - mine).max() < 1e-5
            # ... and not the other fold model's, which differ by far more than that
            assert np.abs(got - other).max() > 1e-3
    # fold models that do not cover the train split: a one-line error naming the checkpoint
    folds[1]["fold"]["heldout"] = held[1][1:] + ["not_a_train_video"]
    torch.save(folds[1], models / "fold2of2" / "MMIL_Net.pt")
    code, out, err = call_stage(STAGE2, [*flags, "--folds", "2", "--output_dir", tmp_path / "s2b"], tmp_path)
    assert code == 2 and "fold2of2/MMIL_Net.pt: held-out video not_a_train_video is not in the train split" in err
    code, out, err = call_stage(STAGE2, [*flags, "--folds", "3", "--output_dir", tmp_path / "s2c"], tmp_path)
    assert code == 2 and "fold1of3/MMIL_Net.pt" in err and "--mode train --folds 3" in err


def test_stage3_folds_and_reestimation(tiny_llp, stage1_out, tmp_path):
    from conftest import STAGE3
    estimate(tiny_llp, stage1_out, tmp_path, "released")
    labels = tmp_path / "released" / "modality_aware_labels.csv"
    m3 = tmp_path / "m3"
    flags = ["--mode", "retrain", "--device", "cpu", *tiny_llp.args(), "--epochs", "1", "--label_ma", labels]
    code, out, err = call_stage(STAGE3, [*flags, "--model_save_dir", m3, "--recipe", "robust"], tmp_path)
    assert code == 0, err
    # --recipe robust: the model, then one per fold on the other half of the train videos, same labels
    train = llp.read_weak(tiny_llp.data / "AVVP_train.csv")
    import torch
    folds = [torch.load(m3 / f"fold{k}of2" / "MMIL_Net.pt", weights_only=True) for k in (1, 2)]
    held = [f["fold"]["heldout"] for f in folds]
    assert sorted(held[0] + held[1]) == sorted(train.filenames) and len(held[0]) == len(train.filenames) // 2
    assert all(f["stage"] == "stage3" and f["label_ma"] == str(labels) for f in folds)
    assert "stage3 fold 1/2: training on 16 videos, 16 held out" in out
    assert (m3 / "fold2of2" / "test_metrics.json").is_file() and (m3 / "MMIL_Net.pt").is_file()
    # stage 2 re-estimates from them: each train video read by the stage-3 model blind to it
    out, meta, _, _ = estimate(tiny_llp, stage1_out, tmp_path, "again", "--folds", "2", "--model_save_dir", m3)
    assert meta["model_stage"] == "stage3" and meta["checkpoint"] is None
    assert [p.split("/")[-3:] for p in meta["fold_checkpoints"]] == [["m3", f"fold{k}of2", "MMIL_Net.pt"] for k in (1, 2)]
    # fold models train on stage 2's labels: no --denoise with them
    code, out, err = call_stage(STAGE3, [*flags, "--model_save_dir", tmp_path / "m3d", "--folds", "2",
                                         "--denoise", "joint"], tmp_path)
    assert code == 2 and "--folds 2 trains on stage 2's labels; it does not combine with --denoise joint" in err
    assert not (tmp_path / "m3d").exists()


def test_recipe_sets_defaults_and_explicit_flags_win():
    from conftest import STAGE1, STAGE2, STAGE3, stage_args
    released, robust = stage_args(STAGE2), stage_args(STAGE2, "--recipe", "robust")
    assert (released.recipe, released.folds, released.partners, released.estimator) == ("released", 1, 1, "released")
    assert (robust.recipe, robust.folds, robust.partners, robust.estimator) == ("robust", 2, 8, "calibrated")
    assert stage_args(STAGE2, "--recipe", "robust", "--estimator", "released").estimator == "released"
    assert stage_args(STAGE2, "--recipe", "robust", "--partners", "3").partners == 3
    assert stage_args(STAGE1, "--recipe", "robust").folds == 2 and stage_args(STAGE1).folds == 1
    # stage 3's robust recipe differs from its released one in the video target and the fold models
    # alone; the recipe is recorded
    r3, s3 = vars(stage_args(STAGE3)), vars(stage_args(STAGE3, "--recipe", "robust"))
    assert s3.pop("recipe") == "robust" and r3.pop("recipe") == "released"
    assert r3.pop("quirk_video_target") is True and s3.pop("quirk_video_target") is False
    assert r3.pop("folds") == 1 and s3.pop("folds") == 2 and r3 == s3
    assert stage_args(STAGE3, "--recipe", "robust", "--quirk_video_target").quirk_video_target is True


def test_calibrated_drops_follow_the_val_truth():
    from conftest import STAGE2, load_stage_main
    s2 = load_stage_main(STAGE2)
    rng = np.random.default_rng(1)

    def evidence(n, visible, weak=None, present=None):
        """The Evidence of n videos, one class: with the audio swapped, the visual prob of a visible
        label stays high and that of an invisible one falls; audio is always present."""
        vis_swapped_v = np.where(visible, 0.8, 0.1) + rng.uniform(-0.05, 0.05, n)
        d = lambda a, v: {"audio_prob": np.asarray(a, float)[:, None], "visual_prob": np.asarray(v, float)[:, None]}
        return s2.model.Evidence([f"v{i}" for i in range(n)], np.ones((n, 1)) if weak is None else weak, None,
                                 d(np.full(n, 0.9), np.full(n, 0.7)), d(np.full(n, 0.85), np.full(n, 0.3)),
                                 d(rng.uniform(0.2, 0.4, n), vis_swapped_v), present)

    val_visible = np.arange(40) % 3 > 0            # a third of the val labels truly invisible
    train_visible = np.arange(30) % 2 > 0
    val = [evidence(40, val_visible, present=(np.ones((40, 1), bool), val_visible[:, None]))]
    est = s2.estimators.calibrated(evidence(30, train_visible), val)
    drop_v, p, info = est.drop_visual, est.per_drop["p_absent"], est.meta["calibration"]
    assert drop_v[:, 0].tolist() == (~train_visible).tolist()   # exactly the invisible train labels
    assert not est.drop_audio.any() and np.isnan(p["audio"]).all()  # val never lacks audio: nothing learnt
    assert info["audio"]["val_absent"] == 0 and "no audio rule learnt" in info["audio"]["note"]
    assert info["visual"]["val_labels"] == 40 and info["visual"]["val_absent"] == 14
    assert info["visual"]["val_dropped"] == info["visual"]["val_dropped_right"] == 14
    assert (p["visual"][~train_visible, 0] > 0.5).all() and (p["visual"][train_visible, 0] < 0.5).all()
    # a label that is not weak is never dropped, whatever its evidence
    weak = np.ones((30, 1))
    weak[0] = 0
    est = s2.estimators.calibrated(evidence(30, train_visible, weak=weak), val)
    drop_v, p = est.drop_visual, est.per_drop["p_absent"]
    assert not drop_v[0, 0] and np.isnan(p["visual"][0, 0]) and drop_v[1:, 0].tolist() == (~train_visible[1:]).tolist()


def test_an_estimator_is_one_function_and_one_name(tiny_llp, stage1_out, tmp_path, monkeypatch):
    """The plug point: a function registered under a name is what --estimator NAME runs, its options
    come from the flags it names, and its per-drop column reaches dropped_labels.csv."""
    from conftest import STAGE2, load_stage_main
    est = load_stage_main(STAGE2).estimators
    monkeypatch.setattr(est, "ESTIMATORS", dict(est.ESTIMATORS))

    @est.estimator("fixed", options=("threshold_factor",))
    def fixed(train, val, threshold_factor):
        y = train.labels > 0
        a, v = train.vis_swapped, train.aud_swapped
        drop_a = y & (a["audio_prob"] < threshold_factor) & (a["visual_prob"] < threshold_factor)
        drop_v = y & (v["audio_prob"] < threshold_factor) & (v["visual_prob"] < threshold_factor)
        margin = {"audio": a["visual_prob"] - threshold_factor, "visual": v["audio_prob"] - threshold_factor}
        return est.Estimate(drop_a, drop_v, {"margin": margin}, {"fixed_threshold": threshold_factor})

    assert fixed.reads_val is False and est.ESTIMATORS["fixed"] is fixed
    out, meta, ev, (_, weak, audio, visual) = estimate(tiny_llp, stage1_out, tmp_path, "fixed", "--estimator", "fixed",
                                                       "--threshold_factor", "0.3")
    assert meta["fixed_threshold"] == 0.3 and "a_class" not in meta and meta["args"]["estimator"] == "fixed"
    dropped = int(((weak > 0) & (visual == 0)).sum())
    assert dropped == meta["dropped_visual"] > 0
    rows = ev[ev["dropped"] == "visual"]
    assert len(rows) == dropped and "threshold" not in ev.columns
    assert (rows["visual_prob_swapped"] < 0.3).all() and (rows["margin"] < 0).all()
    assert np.allclose(rows["margin"], rows["audio_prob_swapped"] - 0.3, atol=2e-6)


def test_stage2_calibrated_estimator(tiny_llp, tmp_path):
    from conftest import STAGE1
    models = tmp_path / "m1"
    code, out, err = call_stage(STAGE1, ["--mode", "train", "--device", "cpu", *tiny_llp.args(), "--epochs", "1",
                                         "--folds", "2", "--model_save_dir", models], tmp_path)
    assert code == 0, err
    flags = ["--device", "cpu", *tiny_llp.args(), "--model_save_dir", models, *tiny_llp.truth_args(),
             "--folds", "2", "--partners", "2", "--estimator", "calibrated"]
    code, out, err = call_stage(STAGE2, [*flags, "--output_dir", tmp_path / "s2"], tmp_path)
    assert code == 0, err
    meta = json.loads((tmp_path / "s2" / "estimate_meta.json").read_text())
    evidence = pd.read_csv(tmp_path / "s2" / "dropped_labels.csv", sep="\t")
    names, weak, audio, visual = llp.read_modality_labels(tmp_path / "s2" / "modality_aware_labels.csv")
    val = llp.read_weak(tiny_llp.data / "AVVP_val_pd.csv")
    cal = meta["calibration"]
    for kind, kept in (("audio", audio), ("visual", visual)):
        # every val weak label is a row once per fold model
        assert cal[kind]["val_labels"] == 2 * int(val.labels.sum())
        assert f"calibrated: {kind} rule from {cal[kind]['val_labels']} val labels" in out
        rows = evidence[evidence["dropped"] == kind]
        assert len(rows) == int(((weak > 0) & (kept == 0)).sum()) == meta["quality"][kind]["dropped"]
        assert (rows["p_absent"] > 0.5).all()
    # the tiny val split lacks some visual events: a visual rule is learnt, with a weight per feature
    assert 0 < cal["visual"]["val_absent"] < cal["visual"]["val_labels"]
    assert len(cal["visual"]["weights"]) == len(cal["visual"]["features"]) + 1 == 13
    assert meta["args"]["estimator"] == "calibrated" and "threshold" not in evidence.columns
    # the same swaps, estimator released: its thresholds, and no p_absent column
    code, out, err = call_stage(STAGE2, [*flags[:-2], "--output_dir", tmp_path / "s2r"], tmp_path)
    assert code == 0, err
    assert "p_absent" not in pd.read_csv(tmp_path / "s2r" / "dropped_labels.csv", sep="\t").columns
    assert "threshold" in pd.read_csv(tmp_path / "s2r" / "dropped_labels.csv", sep="\t").columns
    assert "calibration" not in json.loads((tmp_path / "s2r" / "estimate_meta.json").read_text())
