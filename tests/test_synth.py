"""The synthetic LLP generator (avvp.synth): formats, determinism, truth consistency, statistics."""
import filecmp
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from avvp import features, llp, synth
from avvp.errors import AVVPError
from conftest import llp_file

SIZES = dict(num_train=12, num_val=5, num_test=7)


def _gen(root, seed=3, **kw):
    args = dict(SIZES, seed=seed, progress=False, workers=1)
    args.update(kw)
    return synth.generate(root / "data", root / "feats", **args)


def _all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, _gen(root)


def test_layout_and_formats(tiny):
    root, res = tiny
    data, feats = root / "data", root / "feats"
    for name in ["AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv",
                 "AVVP_eval_visual.csv", "synthetic_train_eval_audio.csv", "synthetic_train_eval_visual.csv",
                 "SYNTHETIC", "synthetic_meta.json"]:
        assert (data / name).is_file(), name
    assert (feats / "SYNTHETIC").is_file()
    assert synth.is_synthetic(data)
    meta = json.loads((data / "synthetic_meta.json").read_text())
    assert meta["synthetic"] is True and meta["args"]["seed"] == 3 and meta["videos"] == {"train": 12, "val": 5, "test": 7}

    header = (data / "AVVP_train.csv").read_text().splitlines()[0]
    assert header == "filename\tevent_labels"
    assert (data / "AVVP_eval_audio.csv").read_text().splitlines()[0] == "filename\tonset\toffset\tevent_labels"

    names = {}
    for split, f in [("train", "AVVP_train.csv"), ("val", "AVVP_val_pd.csv"), ("test", "AVVP_test_pd.csv")]:
        w = llp.read_weak(data / f)
        assert len(w.filenames) == len(w.labels) == SIZES["num_" + split]
        assert w.filenames == res["filenames"][split]
        np.testing.assert_array_equal(w.labels, res["weak"][split])
        names[split] = w.filenames
    every = names["train"] + names["val"] + names["test"]
    ids = [llp.video_id(f) for f in every]
    assert len(set(ids)) == len(ids)
    for f in every:
        assert llp.FILENAME_RE.match(f) and f.startswith("syn") and f[11] == "_"
        start, end = map(int, f[12:].split("_"))
        assert end == start + 10

    dirs = {k: str(feats / folder) for k, (folder, _) in features.MODALITIES.items()}
    stems = {split: [llp.video_id(f) for f in names[split]] for split in names}
    x = features.load_split(dirs, stems["val"], progress=False, cache=False)
    assert x["audio"].shape == (5, 10, 128) and x["video"].shape == (5, 80, 2048) and x["st"].shape == (5, 10, 512)
    raw = np.load(features.feature_path(dirs["video"], stems["val"][0]))
    assert raw.dtype == np.float16 and raw.shape == (80, 2048)
    for split in names:
        x = features.load_split({"video": dirs["video"], "st": dirs["st"]}, stems[split], progress=False, cache=False)
        assert (x["video"] >= 0).all() and (x["st"] >= 0).all()
        assert x["video"].mean() > 0.05              # ReLU'd but not dead
    a = features.load_split({"audio": dirs["audio"]}, stems["train"], progress=False, cache=False)["audio"]
    assert (a < 0).any() and 0.2 < a.std() < 3.0      # signed, unit-ish scale
    n_npy = sum(len(list((feats / folder).glob("*.npy"))) for folder, _ in features.MODALITIES.values())
    assert n_npy == 3 * len(every)


def test_truth_files_match_and_are_consistent(tiny):
    root, res = tiny
    data = root / "data"
    for split in ("train",):
        a = llp.read_dense_matrix(data / "synthetic_train_eval_audio.csv", res["filenames"][split])
        v = llp.read_dense_matrix(data / "synthetic_train_eval_visual.csv", res["filenames"][split])
        np.testing.assert_array_equal(a, res["audio"][split])
        np.testing.assert_array_equal(v, res["visual"][split])
    ev = res["filenames"]["val"] + res["filenames"]["test"]
    a = llp.read_dense_matrix(data / "AVVP_eval_audio.csv", ev)
    v = llp.read_dense_matrix(data / "AVVP_eval_visual.csv", ev)
    np.testing.assert_array_equal(a, np.concatenate([res["audio"]["val"], res["audio"]["test"]]))
    np.testing.assert_array_equal(v, np.concatenate([res["visual"]["val"], res["visual"]["test"]]))
    # the eval files hold val+test only, train truth holds train only
    assert set(pd.read_csv(data / "AVVP_eval_audio.csv", sep="\t")["filename"]) <= set(ev)
    assert set(pd.read_csv(data / "synthetic_train_eval_visual.csv", sep="\t")["filename"]) <= set(res["filenames"]["train"])
    noise = {"missing": 0, "neither": 0, "events": 0, "labels": 0}
    for split in ("train", "val", "test"):
        w = res["weak"][split] > 0
        a, v = res["audio"][split].any(2), res["visual"][split].any(2)
        noise["missing"] += int(((a | v) & ~w).sum())    # an event of a class missing from the weak labels
        noise["neither"] += int((w & ~(a | v)).sum())    # a weak label with no event in either file
        noise["events"] += int((a | v).sum())
        noise["labels"] += int(w.sum())
    # LLP's weak labels are this noisy: 1.1% neither audible nor visible, 0.035 unlabelled events
    # per video; on 24 videos mostly none, never most of them
    assert noise["missing"] <= 0.2 * noise["events"] and noise["neither"] <= 0.2 * noise["labels"], noise


def test_one_row_per_contiguous_run(tiny):
    root, res = tiny
    df = pd.read_csv(root / "data" / "synthetic_train_eval_audio.csv", sep="\t")
    dense = res["audio"]["train"]
    n_runs = sum(len(llp.runs(dense[i, c])) for i, c in zip(*np.nonzero(dense.any(2))))
    assert len(df) == n_runs
    assert ((df["offset"] > df["onset"]) & (df["onset"] >= 0) & (df["offset"] <= 10)).all()


def test_deterministic_bytes_and_seed_changes_them(tmp_path, tiny):
    root, _ = tiny
    _gen(tmp_path / "again")
    files = _all_files(root)
    assert files == _all_files(tmp_path / "again")
    match, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "again", files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)

    other = _gen(tmp_path / "other", seed=4)
    assert other["filenames"]["train"] != tiny[1]["filenames"]["train"]
    assert (root / "data" / "AVVP_train.csv").read_bytes() != (tmp_path / "other" / "data" / "AVVP_train.csv").read_bytes()
    a = np.load(root / "feats" / "vggish" / (llp.video_id(tiny[1]["filenames"]["train"][0]) + ".npy"))
    b = np.load(tmp_path / "other" / "feats" / "vggish" / (llp.video_id(other["filenames"]["train"][0]) + ".npy"))
    assert not np.array_equal(a, b)


def test_float32_and_regeneration_removes_stale_files(tmp_path):
    first = _gen(tmp_path, seed=1)
    st_dir = tmp_path / "feats" / "r2plus1d_18"
    features.load_split({"st": str(st_dir)}, [llp.video_id(f) for f in first["filenames"]["test"]], progress=False)  # packs a cache
    assert (st_dir / ".packed").is_dir()
    _gen(tmp_path, seed=2, dtype="float32")            # same folders: owned by the generator
    assert not (st_dir / ".packed").exists()           # the stale cache went with the old files
    kept = {p.stem for p in (tmp_path / "feats" / "res152").glob("*.npy")}
    assert kept == {llp.video_id(f) for f in synth.make_filenames(2, sum(SIZES.values()))}
    assert not kept & {llp.video_id(f) for f in first["filenames"]["train"]}
    arr = np.load(next((tmp_path / "feats" / "r2plus1d_18").glob("*.npy")))
    assert arr.dtype == np.float32 and arr.shape == (10, 512)


def test_refuses_to_overwrite_real_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "AVVP_train.csv").write_text("filename\tevent_labels\nBjCEufrlXm4_20_30\tSpeech\n")
    with pytest.raises(AVVPError, match="not written by avvp.synth"):
        _gen(tmp_path)
    (tmp_path / "feats2" / "vggish").mkdir(parents=True)
    np.save(tmp_path / "feats2" / "vggish" / "BjCEufrlXm4.npy", np.zeros((10, 128), np.float32))
    with pytest.raises(AVVPError, match="not written by avvp.synth"):
        synth.generate(tmp_path / "data2", tmp_path / "feats2", 3, 2, 2, 1, progress=False)


@pytest.mark.parametrize("kw", [dict(num_train=0), dict(num_val=-1), dict(seed=-1), dict(dtype="int8"),
                                dict(labels_from="/no/such/folder")])
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(AVVPError):
        _gen(tmp_path, **kw)


def test_cli(tmp_path, capsys):
    synth.main(["--data_dir", str(tmp_path / "d"), "--feats_dir", str(tmp_path / "f"), "--num_train", "3",
                "--num_val", "2", "--num_test", "2", "--seed", "7", "--no_progress"])
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(llp.read_weak(tmp_path / "d" / "AVVP_train.csv").filenames) == 3
    with pytest.raises(SystemExit) as e:
        synth.main(["--data_dir", str(tmp_path / "d"), "--feats_dir", str(tmp_path / "f"), "--num_train", "0"])
    assert e.value.code == 2


def test_statistics_follow_llp():
    """Labels per video, class frequencies, modality mix and event lengths of LLP (docs/METHOD.md, "The data: LLP")."""
    rng = np.random.default_rng(0)
    n = 4000
    labels = synth.sample_label_sets(rng, n)
    per_video = np.bincount(labels.sum(1).astype(int), minlength=4)[1:] / n
    assert per_video[0] == pytest.approx(0.4032, abs=0.03)      # LLP train: 4,032 / 10,000 one label
    assert per_video[1] == pytest.approx(0.5879, abs=0.03)      # 5,879 two
    assert per_video[2] == pytest.approx(0.0089, abs=0.006)     # 89 three
    freq = labels.mean(0)
    assert abs(freq[llp.CLASS_INDEX["Speech"]] - 0.4988) < 0.03
    assert abs(freq[llp.CLASS_INDEX["Violin_fiddle"]] - 0.1457) < 0.02
    assert labels.sum(1).mean() == pytest.approx(1.61, abs=0.03)

    audio, visual = synth.sample_truth(rng, labels)
    w, a, v = labels > 0, audio.any(2), visual.any(2)
    total = w.sum()
    assert (w & a & ~v).sum() / total == pytest.approx(0.345, abs=0.03)     # audible only
    assert (w & ~a & v).sum() / total == pytest.approx(0.042, abs=0.015)    # visible only
    assert (w & a & v).sum() / total == pytest.approx(0.603, abs=0.035)     # both
    assert (w & ~a & ~v).sum() / total == pytest.approx(38 / 3348, abs=0.006)  # neither: weak-label noise
    # events of a class missing from the weak labels: LLP's 65 in 1,849 videos, of its classes and modalities
    unlabelled = (a | v) & ~w
    assert unlabelled.sum() / n == pytest.approx(65 / 1849, abs=0.012)
    per_class = unlabelled.sum(0)
    never = [llp.CLASS_INDEX[c] for c in llp.CLASSES if c not in synth.MISSING_CLASS_COUNTS]
    assert len(never) == 10 and (per_class[never] == 0).all()             # never unlabelled in LLP: Fire_alarm, ...
    assert (per_class > 0).sum() >= 10
    kinds = np.array([(a & ~v & ~w).sum(), (~a & v & ~w).sum(), (a & v & ~w).sum()]) / unlabelled.sum()
    assert kinds == pytest.approx(np.array([25, 14, 26]) / 65, abs=0.15)

    def only_audio(c):
        c = llp.CLASS_INDEX[c]
        return (a[:, c] & ~v[:, c])[w[:, c]].mean()

    def only_visual(c):
        c = llp.CLASS_INDEX[c]
        return (~a[:, c] & v[:, c])[w[:, c]].mean()

    assert only_audio("Speech") == pytest.approx(0.76, abs=0.04)
    assert only_audio("Cheering") == pytest.approx(0.57, abs=0.10)
    assert only_visual("Car") == pytest.approx(0.20, abs=0.07)

    names = [f"v{i}" for i in range(n)]
    for dense, mean_len in ((audio, 5.56), (visual, 7.22)):
        ev = llp.events_table(dense, names)
        assert (ev["offset"] - ev["onset"]).mean() == pytest.approx(mean_len, abs=0.5)
    # LLP: a label both audible and visible has the same extent in both modalities 60% of the time
    both = w & a & v
    assert (audio == visual).all(2)[both].mean() == pytest.approx(0.60, abs=0.07)


def test_extents_are_valid():
    rng = np.random.default_rng(1)
    cov = synth._coverage_probs(synth.AUDIO_COVERAGE)
    for c in range(llp.NUM_CLASSES):
        for _ in range(40):
            m = synth._extent(rng, cov[c], synth.RUNS_GIVEN_COVERAGE["audio"], synth.ANCHORS["audio"])
            assert m.shape == (10,) and m.dtype == np.uint8 and 1 <= m.sum() <= 10


def test_labels_from_real_files(tmp_path):
    REAL_LLP = llp_file("AVVP_train.csv").parent
    res = synth.generate(tmp_path / "data", tmp_path / "feats", num_train=6, num_val=9, num_test=8, seed=1,
                         labels_from=REAL_LLP, progress=False, workers=1)
    data = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", llp.MalformedRowWarning)
        for split, f, n in [("train", "AVVP_train.csv", 6), ("val", "AVVP_val_pd.csv", 9), ("test", "AVVP_test_pd.csv", 8)]:
            real = llp.read_weak(REAL_LLP / f)
            ours = llp.read_weak(data / f)
            assert ours.filenames == real.filenames[:n]
            np.testing.assert_array_equal(ours.labels, real.labels[:n])
        ev = res["filenames"]["val"] + res["filenames"]["test"]
        for kind in ("audio", "visual"):
            real = llp.read_dense_matrix(REAL_LLP / f"AVVP_eval_{kind}.csv", ev, warn=False)
            ours = llp.read_dense_matrix(data / f"AVVP_eval_{kind}.csv", ev)
            np.testing.assert_array_equal(ours, real)
            assert real.any()
        tr = res["filenames"]["train"]
        a = llp.read_dense_matrix(data / "synthetic_train_eval_audio.csv", tr)
        v = llp.read_dense_matrix(data / "synthetic_train_eval_visual.csv", tr)
        w = res["weak"]["train"] > 0
        assert np.array_equal(a, res["audio"]["train"]) and np.array_equal(v, res["visual"]["train"])
        assert ((a.any(2) | v.any(2)) & ~w).sum() <= 2 and (a.any(2) | v.any(2))[w].mean() > 0.8  # LLP-like noise
    feats = tmp_path / "feats"
    assert (feats / "vggish" / (llp.video_id(ev[0]) + ".npy")).is_file()
    meta = json.loads((data / "synthetic_meta.json").read_text())
    assert meta["args"]["labels_from"] == os.fspath(REAL_LLP)


def test_audible_only_events_leave_no_visual_evidence():
    """The weak label of an audible-only event misleads the visual branch only if its sight is
    really absent: no signature weight in the visual spaces, on any segment, and the reverse for a
    visible-only event."""
    from avvp import synth_features
    rng = np.random.default_rng(0)
    audio = np.zeros((llp.NUM_CLASSES, llp.NUM_SEGMENTS), np.uint8)
    visual = np.zeros_like(audio)
    speech, dog = llp.CLASS_INDEX["Speech"], llp.CLASS_INDEX["Dog"]
    audio[speech, 2:9] = 1              # off-screen speech
    visual[dog, :] = 1                  # a silent dog
    k = synth_features.MODES_PER_CLASS
    for _ in range(20):
        ca, cv = synth_features._coefficients(rng, audio, visual)           # (10, K) each
        assert not cv[:, speech * k:(speech + 1) * k].any() and ca[2:9, speech * k:(speech + 1) * k].any()
        assert not ca[:, dog * k:(dog + 1) * k].any() and cv[:, dog * k:(dog + 1) * k].any()
        assert not ca[[0, 1, 9], speech * k:(speech + 1) * k].any()          # and only where it sounds


def test_needs_default_replaces_only_missing_or_stale_synthetic_sets(tmp_path):
    import json as json_module
    assert synth.needs_default(tmp_path / "empty")
    data = tmp_path / "data"
    synth.generate(data, tmp_path / "feats", num_train=4, num_val=2, num_test=2, progress=False)
    assert synth.needs_default(data)                       # another size than the default
    meta = json_module.loads((data / synth.META_FILE).read_text())
    meta["args"].update(synth.DEFAULTS)
    (data / synth.META_FILE).write_text(json_module.dumps(meta))
    assert not synth.needs_default(data)                   # the default set, current version
    meta["version"] = synth.GENERATOR_VERSION - 1
    (data / synth.META_FILE).write_text(json_module.dumps(meta))
    assert synth.needs_default(data)                       # an older generator's
    real = tmp_path / "real"
    real.mkdir()
    (real / "AVVP_train.csv").write_text("filename\tevent_labels\nBjCEufrlXm4_20_30\tSpeech\n")
    assert not synth.needs_default(real)                   # real LLP files are never replaced
