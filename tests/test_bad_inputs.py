"""Bad inputs of every entry point, as a careless or unlucky user gives them: each ends in one line
`error: ...` (exit 2, nothing half-written) or a one-line warning where the run goes on correctly
(docs/ROBUSTNESS.md, "Bad inputs, entry by entry")."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from avvp import config, features, llp
from avvp.errors import AVVPError

from conftest import ROOT, STAGE1, STAGE2, STAGE3, call_stage, stage_env

CPU = ["--device", "cpu", "--batch-size", "16"]


def one_error_line(code, err, *needles):
    """Exit 2, no traceback; the last stderr line `error: ...` naming every needle; any other line a warning."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: "), err
    assert all(ln.startswith(("warning: ", "note: ")) for ln in lines[:-1]), err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def module(name, *argv, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", name, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env=stage_env(), timeout=600)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("step", [STAGE1, STAGE3])
def test_a_diverging_run_stops_on_its_first_nan_and_keeps_the_last_good_checkpoint(stage1_out, tiny_llp, tmp_path, step):
    """--lr 1e3: the probabilities turn NaN, which BCE used to reject with a RuntimeError."""
    flags = [*CPU, *tiny_llp.args(), "--epochs", "3", "--lr", "1e3", "--model_save_dir", tmp_path / "m"]
    if step == STAGE3:
        code, out, err = call_stage(STAGE2, ["--mode", "estimate_labels", "--device", "cpu", *tiny_llp.args(),
                                             "--model_save_dir", stage1_out / "models_step1", "--output_dir",
                                             tmp_path / "s2"])
        assert code == 0, err
        flags += ["--label_ma", tmp_path / "s2" / "modality_aware_labels.csv"]
    code, out, err = call_stage(step, ["--mode", "train" if step == STAGE1 else "retrain", *flags])
    one_error_line(code, err, "non-finite loss (nan) at epoch", "last good checkpoint left intact")
    ckpt = torch.load(tmp_path / "m" / "MMIL_Net.pt", weights_only=True)
    assert ckpt["epoch"] >= 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_probabilities_give_a_nan_loss_not_an_error():
    from avvp.model import clamped_bce
    p = torch.tensor([[0.2, float("nan")]], requires_grad=True)
    loss = clamped_bce(p, torch.tensor([[1.0, 0.0]]))
    assert torch.isnan(loss)
    q = torch.tensor([[0.2, 0.7]], requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy(q.clamp(1e-7, 1 - 1e-7), torch.tensor([[1.0, 0.0]]))
    got = clamped_bce(q, torch.tensor([[1.0, 0.0]]))
    assert got.item() == ref.item()                                  # bit-identical for finite probabilities
    g1, = torch.autograd.grad(got, q)
    g2, = torch.autograd.grad(ref, q)
    assert torch.equal(g1, g2)


def test_more_folds_than_train_videos_is_one_line_before_training(tiny_llp, tmp_path):
    code, out, err = call_stage(STAGE1, ["--mode", "train", *CPU, *tiny_llp.args(), "--folds", "33",
                                         "--model_save_dir", tmp_path / "m"])
    one_error_line(code, err, "--folds 33: more folds than the 32 train videos")
    assert "epoch" not in out and not (tmp_path / "m" / "MMIL_Net.pt").exists()
    config.check_folds(32, 32)                                     # one video per fold is enough
    with pytest.raises(AVVPError, match=r"--folds 33: more folds than the 32 train videos"):
        config.check_folds(33, 32)                                 # stage 2 and 3 check the same way


@pytest.mark.parametrize("checkpoint, says", [("", "--checkpoint '': expected a file name"),
                                              ("sub/", "--checkpoint 'sub/': expected a file name")])
def test_a_checkpoint_name_that_cannot_be_saved_is_caught_before_loading(tiny_llp, tmp_path, checkpoint, says):
    code, out, err = call_stage(STAGE1, ["--mode", "train", *CPU, *tiny_llp.args(), "--model_save_dir",
                                         tmp_path / "m", "--checkpoint", checkpoint])
    one_error_line(code, err, says)
    assert "stage 1:" not in out and not (tmp_path / "m" / "val_metrics.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_model_dir_is_caught_before_the_splits_load(tiny_llp, tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        code, out, err = call_stage(STAGE3, ["--mode", "retrain", *CPU, *tiny_llp.args(), "--model_save_dir", d])
    finally:
        d.chmod(0o700)
    one_error_line(code, err, "--model_save_dir is not writable")


def test_model_dir_that_is_a_file_is_caught_before_the_splits_load(tiny_llp, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, out, err = call_stage(STAGE3, ["--mode", "retrain", *CPU, *tiny_llp.args(), "--model_save_dir", f])
    one_error_line(code, err, "--model_save_dir is not writable")
    assert "stage 3:" not in out                                   # before stage 2's labels and the splits


@pytest.mark.parametrize("device, says", [("meta", "--device 'meta': expected auto, cpu, cuda or cuda:N"),
                                          ("gpu", "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
                                          ("cuda:7", "--device cuda:7: ")])
def test_devices_that_do_not_exist_are_one_line(tiny_llp, tmp_path, device, says):
    code, out, err = call_stage(STAGE1, ["--mode", "test", *tiny_llp.args(), "--device", device], tmp_path)
    one_error_line(code, err, says)


def test_mps_where_there_is_none_is_one_line():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(AVVPError, match="--device mps: Apple's MPS is not available"):
        config.resolve_device("mps")


def test_recipe_robust_with_denoise_names_what_the_user_typed(tiny_llp, tmp_path):
    code, out, err = call_stage(STAGE3, ["--mode", "retrain", *tiny_llp.args(), "--recipe", "robust", "--denoise",
                                         "joint"], tmp_path)
    line = one_error_line(code, err, "--recipe robust", "--denoise joint")
    assert "--folds 2" not in line
    code, out, err = call_stage(STAGE3, ["--mode", "retrain", *tiny_llp.args(), "--folds", "2", "--denoise",
                                         "joint"], tmp_path)
    one_error_line(code, err, "--folds 2 trains on stage 2's labels")


def test_partners_beyond_the_valid_ones_warn_that_they_repeat(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("s2_dataloader", ROOT / STAGE2 / "dataloader.py")
    dl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dl)
    labels = np.zeros((5, 25), np.float32)
    labels[:4, 0] = 1                    # 4 videos of class 0 (1 valid partner each), one of class 1 (4)
    labels[4, 1] = 1
    partners = dl.pick_partners(labels, seed=1, filenames=[f"v{i}" for i in range(5)], draws=3)
    assert partners.shape == (3, 5) and (partners[:, :4] == 4).all()
    err = capsys.readouterr().err
    assert err.startswith("warning: --partners 3: 4 video(s) have fewer valid partners than that (first: v0)")
    dl.pick_partners(labels, seed=1, draws=1)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- files

def test_onset_after_offset_warns_and_swapped_columns_are_an_error(tmp_path):
    good = "filename\tonset\toffset\tevent_labels\nabcdefghijk_0_10\t0\t3\tSpeech\nabcdefghijk_0_10\t5\t2\tDog\n"
    (tmp_path / "a.csv").write_text(good)
    with pytest.warns(llp.MalformedRowWarning, match=r"1 row\(s\) with onset > offset mark no segment, line\(s\) 3"):
        llp.read_dense(tmp_path / "a.csv")
    swapped = "filename\tonset\toffset\tevent_labels\nabcdefghijk_0_10\t3\t0\tSpeech\nabcdefghijk_0_10\t7\t2\tDog\n"
    (tmp_path / "b.csv").write_text(swapped)
    with pytest.raises(AVVPError, match=r"b\.csv: 2 of 2 rows have onset > offset \(first: line 2\): are the onset "
                                        r"and offset columns swapped\?"):
        llp.read_dense(tmp_path / "b.csv")


def test_evaluate_refuses_swapped_onset_and_offset(tmp_path):
    weak = "filename\tevent_labels\nabcdefghijk_0_10\tSpeech\n"
    truth = "filename\tonset\toffset\tevent_labels\nabcdefghijk_0_10\t0\t4\tSpeech\n"
    pred = "filename\toffset\tonset\tevent_labels\nabcdefghijk_0_10\t0\t4\tSpeech\n"   # columns swapped
    for name, text in (("weak", weak), ("ea", truth), ("ev", truth), ("pa", pred), ("pv", truth)):
        (tmp_path / f"{name}.csv").write_text(text)
    r = module("avvp.evaluate", "--label", tmp_path / "weak.csv", "--eval_audio", tmp_path / "ea.csv", "--eval_visual",
               tmp_path / "ev.csv", "--pred_audio", tmp_path / "pa.csv", "--pred_visual", tmp_path / "pv.csv")
    one_error_line(r.returncode, r.stderr, "pa.csv: 1 of 1 rows have onset > offset")


@pytest.mark.parametrize("value, dtype", [(1e20, np.float32), (1e300, np.float64)])
def test_huge_feature_values_are_named_not_turned_into_nan(tmp_path, value, dtype):
    arr = np.zeros((10, 128), dtype)
    arr[2, 3] = value
    np.save(tmp_path / "v.npy", arr)
    with pytest.raises(AVVPError, match=r"v\.npy: 1 value\(s\) beyond \+-1e\+06 \(largest 1e\+(20|300)\)"):
        features.load_feature(str(tmp_path), "v", (10, 128))


def test_a_checkpoint_with_nan_weights_is_refused(stage1_out, tiny_llp, tmp_path):
    ckpt = torch.load(stage1_out / "models_step1" / "MMIL_Net.pt", weights_only=True)
    ckpt["model"]["fc_prob.bias"][3] = float("nan")
    (tmp_path / "m").mkdir()
    torch.save(ckpt, tmp_path / "m" / "MMIL_Net.pt")
    code, out, err = call_stage(STAGE1, ["--mode", "parse", "--device", "cpu", *tiny_llp.args(), "--model_save_dir",
                                         tmp_path / "m", "--parse_out", tmp_path / "p"])
    one_error_line(code, err, "1 weight tensor(s) hold NaN or inf (first: fc_prob.bias)")
    assert list((tmp_path / "p").iterdir()) == []                  # checked writable first; nothing written


# ----------------------------------------------------------------------------- avvp.synth, avvp.evaluate

@pytest.mark.parametrize("name, argv, says", [
    ("avvp.evaluate", [], "error: the following arguments are required: --label"),
    ("avvp.synth", ["--workers", "-1"], "error: argument --workers: -1 is not a finite number >= 1"),
    ("avvp.synth", ["--seed", "-1"], "error: argument --seed: -1 is not a finite number >= 0"),
    ("avvp.synth", ["--num_train", "x"], "error: argument --num_train: 'x' is not an integer"),
    ("avvp.extract", ["v.mp4", "--out", "o", "--seed", "4294967296"], "error: argument --seed: 4294967296 is not"),
])
def test_command_line_mistakes_are_one_line_not_argparse_usage(name, argv, says):
    r = module(name, *argv)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(says), r.stderr


# ----------------------------------------------------------------------------- benchmarks

@pytest.mark.parametrize("script", ["estimators.py", "pipeline.py"])
def test_benchmark_flags_and_data_are_checked_up_front(tiny_llp, tmp_path, script):
    bench = ROOT / "benchmarks" / script
    if script == "estimators.py":
        r = subprocess.run([sys.executable, str(bench), "--jobs", "0"], capture_output=True, text=True, env=stage_env())
        assert r.returncode == 2 and r.stderr.startswith("error: argument --jobs: 0 is not a finite number >= 1")
    real = tmp_path / "real"                                        # LLP-like: label files, no synthetic train truth
    real.mkdir()
    for name in llp.WEAK_FILES.values():
        (real / name).write_bytes((tiny_llp.data / name).read_bytes())
    r = subprocess.run([sys.executable, str(bench), "--data_dir", "real", "--feats_dir", str(tiny_llp.feats),
                        "--workdir", str(tmp_path / "w"), "--seeds", "1"], capture_output=True, text=True,
                       env=stage_env(), cwd=tmp_path)
    one_error_line(r.returncode, r.stderr, f"{real}/synthetic_train_eval_audio.csv: not found")   # made absolute


def test_a_failed_benchmark_run_stops_the_runs_not_started(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pipeline
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    pipeline.FAILED.clear()
    with open(tmp_path / "log.txt", "w") as log:
        with pytest.raises(AVVPError, match=r"step1_train_base_model --mode train failed \(argument --epochs"):
            pipeline.stage("step1_train_base_model", ["--mode", "train", "--epochs", "-3"], log)
        assert pipeline.FAILED.is_set()
        with pytest.raises(AVVPError, match="stopped: an earlier run failed"):
            pipeline.stage("step1_train_base_model", ["--mode", "train"], log)
    pipeline.FAILED.clear()


# ----------------------------------------------------------------------------- extraction

def test_extract_checks_dump_frames_up_front(tmp_path):
    pytest.importorskip("av")
    from avvp.synth_video import make_clip
    clip = make_clip(tmp_path / "c.mp4", seconds=1.0)
    (tmp_path / "file").write_text("x")
    r = module("avvp.extract", clip, "--out", tmp_path / "o", "--dump_frames", tmp_path / "file", "--random_weights",
               "--device", "cpu")
    one_error_line(r.returncode, r.stderr, "--dump_frames folder is not writable")
    assert not (tmp_path / "o" / "vggish").exists() or not any((tmp_path / "o" / "vggish").iterdir())


def test_foreign_weights_are_a_short_line(tmp_path):
    from avvp import extract_nets
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(2000)}, tmp_path / "w.pth")
    with pytest.raises(AVVPError) as e:
        extract_nets.load_into(extract_nets.VGGish(), str(tmp_path / "w.pth"))
    assert len(str(e.value)) < len(str(tmp_path)) + 360 and "does not fit the network" in str(e.value)  # torch's text lists all 2,000
    torch.save(torch.zeros(3), tmp_path / "t.pth")
    with pytest.raises(AVVPError, match=r"t\.pth: not a state dict of weights \(holds a Tensor\)"):
        extract_nets.load_state(str(tmp_path / "t.pth"))


def test_one_corrupt_packet_is_skipped_as_ffmpeg_does(tmp_path):
    pytest.importorskip("av")
    from avvp import extract_media as media
    from avvp.synth_video import make_clip
    clip = make_clip(tmp_path / "c.mp4", seconds=4.0, audio=False)
    data = bytearray(clip.read_bytes())
    i = int(len(data) * 0.5)
    data[i:i + 400] = bytes(range(256)) + bytes(144)               # garbage in one video packet
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    out = media.decode(str(tmp_path / "bad.mp4"))
    assert out["images"].shape == (80, 3, 224, 224)
    assert any("corrupt video packet(s) skipped" in w for w in out["warnings"]), out["warnings"]


def test_stale_scores_are_not_left_beside_a_parse_without_truth(stage1_out, tiny_llp, tmp_path):
    out = tmp_path / "p"
    base = ["--mode", "parse", "--device", "cpu", *tiny_llp.args(), "--model_save_dir", stage1_out / "models_step1",
            "--parse_out", out]
    code, o, err = call_stage(STAGE1, base)
    assert code == 0 and (out / "metrics.json").is_file(), err
    code, o, err = call_stage(STAGE1, [*base, "--parse_dir", tiny_llp.feats])
    assert code == 0, err
    assert not (out / "metrics.json").exists() and not (out / "per_class_f.csv").exists()
