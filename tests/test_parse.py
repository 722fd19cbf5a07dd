"""--mode parse (avvp/parse.py): event tables that score like avvp.predict.evaluate, pictures
(skipped without matplotlib), unlabelled input.

One tiny synthetic dataset and one stage-1 model (1 epoch) are shared by the module; the stage is
run as a user runs it, with subprocess from its folder.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avvp import config, llp, parse
from avvp import evaluate as llp_eval
from avvp.checkpoints import load_into
from avvp.data import load_split, read_eval_truth
from avvp.errors import AVVPError
from avvp.model import MMIL_Net
from avvp.predict import evaluate, predict

REPO = Path(__file__).resolve().parents[1]
STAGE1 = REPO / "step1_train_base_model"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYS = ["seg_a", "seg_v", "seg_av", "seg_type", "seg_event", "evt_a", "evt_v", "evt_av", "evt_type", "evt_event"]

synth = pytest.importorskip("avvp.synth")


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["CUDA_VISIBLE_DEVICES"] = ""      # the tiny model trains on the CPU whatever the machine
    e["OMP_NUM_THREADS"] = "1"          # tiny batches: one thread is 10x faster than two on a busy 2-core box
    return e


def paths_args(root, label_test=None):
    override = {"label_test": label_test} if label_test else {}
    return config.path_args(root / "data", root / "feats", **override) + [
        "--model_save_dir", str(root / "models"), "--no_progress", "--device", "cpu"]


def stage1(*argv, prelude=None):
    """Run step1_train_base_model/main_avvp.py from its folder; prelude: python run before it."""
    if prelude is None:
        cmd = [sys.executable, "main_avvp.py", *argv]
    else:
        code = (f"import runpy, sys; {prelude}; sys.argv = ['main_avvp.py'] + {list(argv)!r}; "
                f"runpy.run_path('main_avvp.py', run_name='__main__')")
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=STAGE1, env=env(), capture_output=True, text=True, timeout=300)


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny synthetic LLP set, a 1-epoch stage-1 model, and one labelled parse."""
    root = tmp_path_factory.mktemp("parse")
    synth.generate(root / "data", root / "feats", 24, 6, 10, 3, progress=False)
    base = paths_args(root)
    # 3 steps at a high lr: enough for the model to predict some audio and some visual events
    ok(stage1("--mode", "train", "--epochs", "1", "--batch_size", "8", "--lr", "3e-3", *base))
    out = root / "parsed"
    r = ok(stage1("--mode", "parse", "--parse_out", str(out), *base))
    # (avvp.evaluate refuses a header-only prediction file, so scoring the tables needs events of both kinds)
    assert "parsed 10 videos: 10 audio and 10 visual events" in r.stdout, r.stdout
    return root, base, out, r.stdout


@pytest.fixture(scope="module")
def reference(trained):
    """predict and evaluate in this process, on the same checkpoint and test split."""
    root, base, _, _ = trained
    args = config.add_common_args(config.ArgumentParser("t")).parse_args(base)
    model = MMIL_Net(frame_pool=args.frame_pool)
    load_into(model, os.path.join(args.model_save_dir, args.checkpoint))
    import torch
    split = load_split(config.feature_source(args), args.label_test, torch.device("cpu"),
                       truth=read_eval_truth(args.eval_audio, args.eval_visual), name="test")
    probs = predict(model, split, 256)
    return split, probs, evaluate(model, split, 256, probs=probs)


def test_parse_tables_score_the_same_through_the_evaluate_cli(trained, reference):
    root, _, out, stdout = trained
    _, _, want = reference
    d = root / "data"
    r = subprocess.run([sys.executable, "-m", "avvp.evaluate", "--json", "--label", str(d / "AVVP_test_pd.csv"),
                        "--eval_audio", str(d / "AVVP_eval_audio.csv"), "--eval_visual", str(d / "AVVP_eval_visual.csv"),
                        "--pred_audio", str(out / "pred_audio.csv"), "--pred_visual", str(out / "pred_visual.csv")],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    got = json.loads(ok(r).stdout)
    written = json.loads((out / "metrics.json").read_text())
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
        assert written[k] == pytest.approx(want[k], abs=1e-6), k
    assert written["videos"] == 10 and written["epoch"] == 1 and written["stage"] == "stage1"
    # the LLP table and the per-class report are printed
    for line in llp_eval.format_table(want).splitlines():
        assert line in stdout
    assert "per-class segment F" in stdout


def test_pred_tables_one_row_per_contiguous_run(trained, reference):
    _, _, out, _ = trained
    split, probs, _ = reference
    pred_a, pred_v = llp_eval.predict_segments(probs["frame_prob"], probs["audio_prob"], probs["visual_prob"])
    for kind, pred in (("audio", pred_a), ("visual", pred_v)):           # pred: (10, 25, 10)
        df = pd.read_csv(out / f"pred_{kind}.csv", sep="\t")
        assert list(df.columns) == ["filename", "onset", "offset", "event_labels"]
        # as many rows as 0 -> 1 steps along the segments, none of them empty
        steps = np.diff(np.pad(pred.astype(np.int8), ((0, 0), (0, 0), (1, 0))), axis=2) == 1
        assert len(df) == int(steps.sum()) > 0
        assert (df["offset"] > df["onset"]).all()
        # runs of one (video, class) neither touch nor overlap: each is maximal
        for _, g in df.sort_values("onset").groupby(["filename", "event_labels"]):
            assert (g["onset"].to_numpy()[1:] > g["offset"].to_numpy()[:-1]).all()
        # and together they give back the thresholded predictions exactly
        assert np.array_equal(llp.read_dense_matrix(out / f"pred_{kind}.csv", split.filenames), pred)


def test_video_probs_and_per_class_tables(trained, reference):
    _, _, out, _ = trained
    split, probs, _ = reference
    vp = pd.read_csv(out / "video_probs.csv", sep="\t")
    assert list(vp.columns) == ["filename", "class", "video_prob", "audio_prob", "visual_prob"]
    assert len(vp) == 10 * 25
    for key in ("video_prob", "audio_prob", "visual_prob"):
        np.testing.assert_allclose(vp[key].to_numpy().reshape(10, 25), probs[key], atol=1e-6)
    assert vp["filename"].iloc[25] == split.filenames[1] and vp["class"].iloc[26] == llp.CLASSES[1]
    pc = pd.read_csv(out / "per_class_f.csv", sep="\t", index_col="class")
    pred_a, pred_v = llp_eval.predict_segments(probs["frame_prob"], probs["audio_prob"], probs["visual_prob"])
    want = llp_eval.per_class_segment_f(pred_a, pred_v, split.gt_a, split.gt_v)
    np.testing.assert_allclose(pc.to_numpy(), want.to_numpy(), atol=1e-4)   # NaN where a class never occurs
    assert list(pc.index) == llp.CLASSES


def test_plot_writes_valid_pngs(trained, reference, tmp_path):
    pytest.importorskip("matplotlib")
    root, base, labelled, _ = trained
    split = reference[0]
    out = tmp_path / "plotted"
    ok(stage1("--mode", "parse", "--parse_out", str(out), "--plot", "2", *base))
    tables = sorted(p.name for p in labelled.glob("*.csv"))
    assert len(tables) == 4  # the pictures come on top of the same tables
    for name in tables:
        assert (out / name).read_bytes() == (labelled / name).read_bytes(), name
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["per_class_f.png", f"timeline_01_{split.filenames[0]}.png", f"timeline_02_{split.filenames[1]}.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    assert not list(out.glob(".*.tmp"))                                   # atomic writes left no temp file


def test_parse_dir_needs_no_label_file(trained, reference, tmp_path):
    root, _, out, _ = trained
    split, probs, _ = reference
    missing = tmp_path / "no_such_labels.csv"
    args = paths_args(root, label_test=missing)
    out_dir = tmp_path / "dir_parse"
    # no label file, no truth file: the later --eval_* flags override the earlier ones
    r = ok(stage1("--mode", "parse", "--parse_dir", str(root / "feats"), "--parse_out", str(out_dir), *args,
                  "--label_train", str(missing), "--label_val", str(missing),
                  "--eval_audio", str(missing), "--eval_visual", str(missing)))
    assert sorted(p.name for p in out_dir.iterdir()) == ["index.html", "pred_audio.csv", "pred_visual.csv",
                                                         "video_probs.csv"]
    vp = pd.read_csv(out_dir / "video_probs.csv", sep="\t")
    ids = sorted(f[:11] for s in ("train", "val", "test")
                 for f in llp.read_weak(root / "data" / synth.WEAK_FILES[s]).filenames)
    assert sorted(vp["filename"].unique()) == ids and len(vp) == 40 * 25
    # same model, same features: the test videos get the probabilities of the labelled parse
    by_id = vp.set_index(["filename", "class"])
    for i, f in enumerate(split.filenames):
        rows = by_id.loc[f[:11]].loc[llp.CLASSES]
        np.testing.assert_allclose(rows["audio_prob"].to_numpy(), probs["audio_prob"][i], atol=1e-6)
    for kind in ("audio", "visual"):
        df = pd.read_csv(out_dir / f"pred_{kind}.csv", sep="\t")
        assert df["filename"].str.len().eq(11).all() and set(df["filename"]) <= set(ids)
    assert "40 videos" in r.stdout


def test_missing_matplotlib_is_one_line_exit_2(trained):
    root, base, _, _ = trained
    r = stage1("--mode", "parse", "--plot", "1", "--parse_out", str(root / "never"), *base,
               prelude="sys.modules['matplotlib'] = None")
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert err == [f"error: {parse.MATPLOTLIB_HINT}"] and "pip install matplotlib" in err[0]
    assert not (root / "never").exists()                                 # failed before writing anything


def test_require_matplotlib_in_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(AVVPError, match="pip install matplotlib"):
        parse.require_matplotlib()


def test_parse_dir_folders_and_partial_ids(tmp_path, capsys):
    own = {"audio": "a/", "video": "v/", "st": "s/"}
    assert parse.parse_dirs("", own) == {"audio": "a/", "video": "v/", "st": "s/"}      # bare --parse_dir
    dirs = parse.parse_dirs(str(tmp_path), own)
    assert dirs == {"audio": str(tmp_path / "vggish"), "video": str(tmp_path / "res152"),
                    "st": str(tmp_path / "r2plus1d_18")}
    with pytest.raises(AVVPError, match="vggish: feature folder not found"):
        parse.video_ids(dirs)
    for d in dirs.values():
        os.makedirs(d)
        for vid in ("bbbbbbbbbbb", "aaaaaaaaaaa"):
            np.save(os.path.join(d, vid + ".npy"), np.zeros(1))
    np.save(os.path.join(dirs["st"], "ccccccccccc.npy"), np.zeros(1))                 # only one modality
    assert parse.video_ids(dirs) == ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    assert "skipping 1 video id(s) lacking a feature file in some of" in capsys.readouterr().err.replace("\n", " ")
    for d in dirs.values():
        os.makedirs(os.path.join(d, "folder.npy"))                              # a folder is no feature file
        np.save(os.path.join(d, "a\tb.npy"), np.zeros(1))                        # a name no table can hold
    assert parse.video_ids(dirs) == ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    err = capsys.readouterr().err
    assert "leaving out 1 feature file(s) whose name holds a tab or line break: 'a\\tb'" in err
    assert err.strip().endswith(": ccccccccccc")                                # the skipped id, named


def test_parse_dir_reads_each_stem_as_it_is(trained, tmp_path):
    """abcdefghijk.npy and abcdefghijk_0_10.npy are two videos, each read from its own files; a
    labelled parse's scores in the output folder do not outlive a parse without truth."""
    root, base, out, _ = trained
    feats = tmp_path / "feats"
    rng = np.random.default_rng(0)
    for folder, shape in (("vggish", (10, 128)), ("res152", (80, 2048)), ("r2plus1d_18", (10, 512))):
        (feats / folder).mkdir(parents=True)
        for stem in ("abcdefghijk", "abcdefghijk_0_10"):
            np.save(feats / folder / f"{stem}.npy", rng.random(shape, dtype=np.float32) * (3 if "_" in stem else 1))
    parsed = tmp_path / "parsed"
    import shutil
    shutil.copytree(out, parsed)                                          # holds metrics.json of a scored parse
    assert (parsed / "metrics.json").is_file()
    r = ok(stage1("--mode", "parse", "--parse_dir", str(feats), "--parse_out", str(parsed), *base))
    vp = pd.read_csv(parsed / "video_probs.csv", sep="\t")
    assert sorted(vp["filename"].unique()) == ["abcdefghijk", "abcdefghijk_0_10"]
    a, b = (vp[vp["filename"] == f]["audio_prob"].to_numpy() for f in ("abcdefghijk", "abcdefghijk_0_10"))
    assert not np.array_equal(a, b)                                       # two videos, not one read twice
    assert not (parsed / "metrics.json").exists() and not (parsed / "per_class_f.csv").exists()
    assert "removed" in r.stdout and "metrics.json" in r.stdout
