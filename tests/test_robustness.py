"""Sturdiness: one-line errors on bad input, atomic hand-offs, disk full, kill -9, resume, determinism.

Every failure case must end in ONE line `error: ...` naming the file / row / shape at fault and
exit status 2, never a traceback. Stages run in-process (conftest.call_stage) where monkeypatching
or speed matters, and as real subprocesses (conftest.run_stage / stage_command) where the process
boundary is the point (stderr format, SIGKILL). Tiny data: 32/8/8 synthetic videos, CPU, 1 thread.
"""
import errno
import json
import contextlib
import os
import random
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch

import avvp.files
import avvp.llp
import avvp.engine
from avvp import llp
from avvp.errors import AVVPError, cli
from avvp.files import atomic_group, atomic_path, atomic_write_text
from avvp.llp import MalformedRowWarning

from conftest import ROOT, STAGE1, STAGE2, STAGE3, call_stage, run_stage, stage_command, stage_env

CPU = ["--device", "cpu", "--batch-size", "16"]        # 32 train videos: 2 batches per epoch
CPU2 = ["--device", "cpu"]                               # stage 2 trains nothing: no batch size
TRAIN1 = ["--mode", "train", *CPU]


@contextlib.contextmanager
def lr_every_epoch():
    """StepLR(1, 0.5) in this process: the lr changes every epoch, so the scheduler state matters."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(avvp.engine, "LR_STEP", 1)
        mp.setattr(avvp.engine, "LR_GAMMA", 0.5)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: fast on a busy 2-core machine and the same float sums as the subprocesses
    (conftest.run_stage sets OMP_NUM_THREADS=1), so in-process and subprocess runs compare bitwise."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_one_line_error(code, err, *needles):
    """Exit status 2, no traceback, every stderr line a one-line warning/error, the last an error naming `needles`."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(("error: ", "warning: ")) for line in lines), err
    assert lines[-1].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[-1], f"{n!r} not in {lines[-1]!r}"
    return lines[-1]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


@pytest.fixture(scope="module")
def reference_2_epochs(tiny_llp, tmp_path_factory):
    """An uninterrupted 2-epoch stage-1 run with a per-epoch lr step: the target of the resume tests."""
    tmp = tmp_path_factory.mktemp("ref2")
    with lr_every_epoch():
        code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "2"], tmp)
    assert code == 0, err
    return tmp / "models_step1"


# ----------------------------------------------------------------------------- flags

BAD_FLAGS = [  # (stage folders, flag, value, what the error says about the value)
    ((STAGE1, STAGE3), "--lr", "nan", "nan is not a finite number > 0"),
    ((STAGE1, STAGE3), "--lr", "0", "0 is not a finite number > 0"),
    ((STAGE1, STAGE3), "--lr", "1e400", "1e400 is not a finite number > 0"),
    ((STAGE1, STAGE3), "--lr", "fast", "'fast' is not a number"),
    ((STAGE1, STAGE3), "--temperature", "-1", "-1 is not a finite number > 0"),
    ((STAGE1, STAGE3), "--batch-size", "0", "0 is not a finite number >= 1"),
    ((STAGE1, STAGE3), "--batch-size", "1.5", "'1.5' is not an integer"),
    ((STAGE1, STAGE3), "--epochs", "-1", "-1 is not a finite number >= 0"),
    ((STAGE1, STAGE3), "--contrastive_smoothing", "1", "1 is not a finite number >= 0 and < 1"),
    ((STAGE1, STAGE3), "--visual_smoothing", "1.5", "1.5 is not a finite number >= 0 and <= 1"),
    ((STAGE2,), "--threshold_factor", "inf", "inf is not a finite number >= 0 and <= 1"),
    ((STAGE2,), "--threshold_factor", "-0.5", "-0.5 is not a finite number >= 0 and <= 1"),
    ((STAGE2,), "--threshold_factor", "1e308", "1e308 is not a finite number >= 0 and <= 1"),
    ((STAGE2,), "--partners", "100000", "100000 is not a finite number >= 1 and <= 64"),
    ((STAGE1, STAGE2, STAGE3), "--seed", "-1", "-1 is not a finite number >= 0 and <= 4294967295"),
    ((STAGE1, STAGE2, STAGE3), "--seed", "4294967296", "4294967296 is not a finite number >= 0 and <= 4294967295"),
    ((STAGE1, STAGE2, STAGE3), "--threads", "100000", f"100000 is more than this machine's {os.cpu_count()} CPU threads"),
    ((STAGE1, STAGE2, STAGE3), "--eval_batch_size", "0", "0 is not a finite number >= 1"),
]


def _one_error_line(code, out, err, *needles):
    """Exit status 2, nothing on stdout, exactly one stderr line: `error: ...` naming every needle."""
    assert code == 2, (code, err)
    assert out == "" and err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and err.rstrip().endswith("(see --help)"), err
    for n in needles:
        assert n in err, (n, err)


@pytest.mark.parametrize("step, flag, value, says", [
    pytest.param(step, flag, value, says, id=f"{step.split('_')[0]} {flag} {value}")
    for steps, flag, value, says in BAD_FLAGS for step in steps])
def test_a_bad_flag_value_is_one_error_line_naming_the_flag(tiny_llp, tmp_path, step, flag, value, says):
    mode = {STAGE1: "train", STAGE2: "estimate_labels", STAGE3: "retrain"}[step]
    code, out, err = call_stage(step, ["--mode", mode, *tiny_llp.args(), flag, value], tmp_path)
    _one_error_line(code, out, err, f"argument {flag}", says)
    assert not (tmp_path / "models_step1").exists() and not (tmp_path / "outputs_step2").exists()


@pytest.mark.parametrize("step, argv, says", [
    (STAGE2, ["--epochs", "3"], "unrecognized arguments: --epochs 3"),       # stage 2 trains nothing
    (STAGE2, ["--batch-size", "16"], "unrecognized arguments: --batch-size 16"),
    (STAGE2, ["--resume"], "unrecognized arguments: --resume"),
    (STAGE1, ["--no-graph"], "unrecognized arguments: --no-graph"),
    (STAGE3, ["--no-fused_adam"], "unrecognized arguments: --no-fused_adam"),
    (STAGE1, ["--fused_adam"], "argument --fused_adam: expected one argument"),
    (STAGE1, ["--fused_adam", "yes"], "argument --fused_adam: invalid choice: 'yes'"),
    (STAGE3, ["--stack_modalities"], "unrecognized arguments: --stack_modalities"),
    (STAGE2, ["--estimator", "oracle"], "argument --estimator: invalid choice: 'oracle'"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_a_flag_the_stage_does_not_have_is_one_error_line(step, argv, says):
    _one_error_line(*call_stage(step, argv), says)


def test_boundary_flag_values_are_accepted():
    from conftest import stage_args
    a = stage_args(STAGE1, "--epochs", "0", "--contrastive_weight", "0", "--visual_smoothing", "1",
                   "--contrastive_smoothing", "0", "--batch-size", "1", "--lr", "1e-9", "--fused_adam", "off")
    assert (a.epochs, a.contrastive_weight, a.visual_smoothing, a.contrastive_smoothing, a.batch_size,
            a.lr, a.fused_adam) == (0, 0.0, 1.0, 0.0, 1, 1e-9, "off")
    assert isinstance(a.epochs, int) and isinstance(a.batch_size, int)
    b = stage_args(STAGE2, "--threshold_factor", "0", "--estimator", "calibrated")
    assert (b.threshold_factor, b.estimator) == (0.0, "calibrated")
    assert not hasattr(b, "epochs") and not hasattr(b, "lr") and not hasattr(b, "graph")


def test_a_bad_flag_value_in_a_real_process_is_one_line_on_stderr(tiny_llp, tmp_path):
    r = run_stage(STAGE3, ["--mode", "retrain", *tiny_llp.args(), "--lr", "nan"], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "error: argument --lr: nan is not a finite number > 0 (see --help)\n"


# ----------------------------------------------------------------------------- features

@pytest.mark.parametrize("flag, name", [("label_train", "AVVP_train.csv"), ("eval_audio", "AVVP_eval_audio.csv")])
def test_no_data_yet_is_a_one_line_error_that_says_where_to_get_it(tiny_llp, tmp_path, flag, name):
    absent = tmp_path / "data" / name
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(**{flag: absent}), "--epochs", "1"], tmp_path)
    assert_one_line_error(code, err, absent, "label file not found", "data/README.md", "python -m avvp.synth")
    assert "epoch   1/" not in out


def test_missing_feature_file_is_a_one_line_error(mutable_llp, tmp_path):
    name = llp.read_weak(mutable_llp.data / "AVVP_train.csv").filenames[3]
    victim = mutable_llp.feature_dir("audio") / (llp.video_id(name) + ".npy")
    victim.unlink()
    code, out, err = call_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "1"], tmp_path)
    assert_one_line_error(code, err, victim, "feature file missing", "1 of 32", "--skip_missing")
    assert "epoch   1/" not in out


def test_skip_missing_drops_videos_and_says_how_many(mutable_llp, tmp_path):
    names = llp.read_weak(mutable_llp.data / "AVVP_train.csv").filenames
    (mutable_llp.feature_dir("audio") / (llp.video_id(names[0]) + ".npy")).unlink()
    (mutable_llp.feature_dir("video") / (llp.video_id(names[5]) + ".npy")).unlink()
    code, out, err = call_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "0", "--skip_missing"], tmp_path)
    assert code == 0, err
    assert "skipping 2 of 32 videos" in err
    assert "30 train" in out


def _write_npy(path, arr):
    with open(path, "wb") as f:
        np.save(f, arr)


def _bad_shape(p):
    _write_npy(p, np.zeros((9, 128), np.float32))


def _bad_dtype(p):
    _write_npy(p, np.zeros((10, 128), np.int32))


def _nan(p):
    a = np.load(p).astype(np.float32)
    a[4, 7] = np.nan
    _write_npy(p, a)


def _inf(p):
    a = np.load(p).astype(np.float32)
    a[0, 0] = np.inf
    a[1, 1] = -np.inf
    _write_npy(p, a)


def _truncated(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _garbage(p):
    p.write_bytes(os.urandom(3000))


def _npz(p):
    with open(p, "wb") as f:
        np.savez(f, x=np.zeros((10, 128), np.float32))


@pytest.mark.parametrize("damage, modality, needle", [
    (_bad_shape, "audio", "shape (9, 128) (expected (10, 128))"),
    (_bad_dtype, "audio", "dtype int32"),
    (_nan, "audio", "1 non-finite value(s)"),
    (_nan, "video", "1 non-finite value(s)"),   # res152: loaded as segment means (--frame_pool early)
    (_inf, "st", "2 non-finite value(s)"),
    (_truncated, "video", "cannot read .npy"),
    (_garbage, "audio", "cannot read .npy"),
    (_npz, "audio", "not a .npy array"),
], ids=["shape", "dtype", "nan", "nan-res152", "inf", "truncated", "garbage", "npz"])
def test_bad_feature_file_is_a_one_line_error(mutable_llp, tmp_path, damage, modality, needle):
    name = llp.read_weak(mutable_llp.data / "AVVP_train.csv").filenames[7]
    victim = mutable_llp.feature_dir(modality) / (llp.video_id(name) + ".npy")
    damage(victim)
    code, out, err = call_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "1"], tmp_path)
    assert_one_line_error(code, err, victim, needle)


# ----------------------------------------------------------------------------- label files

def _lines(path):
    return path.read_text().splitlines()


def _empty(p):
    p.write_text("")


def _header_only(p):
    p.write_text(_lines(p)[0] + "\n")


def _duplicate(p):
    lines = _lines(p)
    p.write_text("\n".join(lines + [lines[2]]) + "\n")      # line 3 again, as line len+1


def _unknown_class(p):
    lines = _lines(p)
    lines[4] = lines[4].split("\t")[0] + "\tSpeech,Kazoo"     # line 5
    p.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, needles", [
    (_empty, ["empty file"]),
    (_header_only, ["header only, no rows"]),
    (_duplicate, ["line 34: duplicate filename", "(first at line 3)"]),
    (_unknown_class, ["line 5: unknown class 'Kazoo'"]),
], ids=["empty", "header_only", "duplicate", "unknown_class"])
def test_bad_label_file_is_a_one_line_error(mutable_llp, tmp_path, damage, needles):
    victim = mutable_llp.data / "AVVP_train.csv"
    damage(victim)
    code, out, err = call_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "1"], tmp_path)
    assert_one_line_error(code, err, victim, *needles)


def _damage_eval_rows(path):
    """Lines 3 (onset 'x'), 5 (offset 11) and a new last line (no class) become malformed."""
    lines = _lines(path)
    f = lines[2].split("\t")
    lines[2] = "\t".join([f[0], "x", f[2], f[3]])
    f = lines[4].split("\t")
    lines[4] = "\t".join([f[0], f[1], "11", f[3]])
    lines.append(f"{f[0]}\t0\t10")
    path.write_text("\n".join(lines) + "\n")
    return [3, 5, len(lines)]


def test_malformed_eval_rows_warn_with_line_numbers_and_the_rest_loads(mutable_llp, tmp_path):
    path = mutable_llp.data / "AVVP_eval_audio.csv"
    total = len(_lines(path)) - 1
    bad = _damage_eval_rows(path)
    pattern = rf"skipped 3 malformed row\(s\) at line\(s\) {bad[0]}, {bad[1]}, {bad[2]}$"
    with pytest.warns(MalformedRowWarning, match=pattern):
        rows = llp.read_dense(path)
    assert len(rows) == total - 2 and bad[0] not in rows["line"].tolist()
    with pytest.warns(MalformedRowWarning, match=pattern):  # and a stage runs on through it
        code, out, err = call_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "0"], tmp_path)
    assert code == 0, err
    assert (tmp_path / "models_step1" / "test_metrics.json").is_file()


def test_dense_numbers_are_read_as_pandas_read_them_and_duplicate_columns_are_an_error(tmp_path):
    """onset/offset: integers, '3.0' and '1e1' are numbers; '1_0' and non-ASCII digits ('３'),
    which Python's float() would take, are not (pandas.to_numeric's reading): such rows are skipped
    with a warning naming their lines. Cells are stripped, and a repeated column is an error."""
    path = tmp_path / "dense.csv"
    rows = [("BjCEufrlXm4_20_30", "0", "3", "Speech"), ("BjCEufrlXm4_20_30", "3.0", "1e1", "Dog"),
            ("BjCEufrlXm4_20_30", "1_0", "10", "Cat"), ("BjCEufrlXm4_20_30", "\uff13", "5", "Car"),
            ("BjCEufrlXm4_20_30", " 2 ", "4", " Banjo ")]
    path.write_text("filename\tonset\toffset\tevent_labels\n" + "".join("\t".join(r) + "\n" for r in rows),
                    encoding="utf-8")
    with pytest.warns(MalformedRowWarning, match=r"skipped 2 malformed row\(s\) at line\(s\) 4, 5$"):
        t = llp.read_dense(path)
    assert len(t) == 3 and t["onset"].tolist() == [0, 3, 2] and t["offset"].tolist() == [3, 10, 4]
    assert t["line"].tolist() == [2, 3, 6] and [llp.CLASSES[c] for c in t["cls"]] == ["Speech", "Dog", "Banjo"]
    weak = tmp_path / "weak.csv"
    weak.write_text("filename\tevent_labels\tfilename\nBjCEufrlXm4_20_30\tSpeech\tx\n")
    with pytest.raises(AVVPError, match=r"weak\.csv: column\(s\) \['filename'\] appear more than once"):
        llp.read_weak(weak)


def test_cli_prints_one_line_warnings_and_one_line_errors(mutable_llp, tmp_path):
    """A real subprocess: malformed eval rows (val) warn in one line, then a missing test feature file
    stops the run with one line and exit status 2, no traceback."""
    bad = _damage_eval_rows(mutable_llp.data / "AVVP_eval_audio.csv")
    name = llp.read_weak(mutable_llp.data / "AVVP_test_pd.csv").filenames[-1]
    victim = mutable_llp.feature_dir("st") / (llp.video_id(name) + ".npy")
    victim.unlink()
    r = run_stage(STAGE1, [*TRAIN1, *mutable_llp.args(), "--epochs", "1"], tmp_path)
    assert_one_line_error(r.returncode, r.stderr, victim, "feature file missing")
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert warned and f"line(s) {bad[0]}, {bad[1]}, {bad[2]}" in warned[0], r.stderr


def test_cli_error_messages_are_flattened_to_one_line(capsys):
    @cli
    def boom():
        raise AVVPError("first part\n  second part\n")

    with pytest.raises(SystemExit) as e:
        boom()
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: first part second part\n"


# ----------------------------------------------------------------------------- checkpoints between stages

def test_stage2_without_stage1_checkpoint_says_where_it_looked_and_what_to_run(tiny_llp, tmp_path):
    code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args(),
                                         "--model_save_dir", "nowhere/"], tmp_path)
    line = assert_one_line_error(code, err, "checkpoint not found", "run stage 1 first",
                                 "python main_avvp.py --mode train")
    assert "nowhere/MMIL_Net.pt" in line and str(ROOT / STAGE2 / "nowhere" / "MMIL_Net.pt") in line
    assert not (tmp_path / "outputs_step2" / "modality_aware_labels.csv").exists()


def _wider_fc_a(ckpt):
    ckpt["model"]["fc_a.weight"] = torch.zeros(256, 128)
    ckpt["model"]["fc_a.bias"] = torch.zeros(256)
    return "fc_a.weight"


def _missing_key(ckpt):
    del ckpt["model"]["fc_prob.bias"]
    return "fc_prob.bias"


@pytest.mark.parametrize("change", [_wider_fc_a, _missing_key], ids=["layer_shape", "missing_key"])
@pytest.mark.parametrize("who", ["stage2", "stage1_test", "stage1_resume"])
def test_checkpoint_of_another_architecture_is_a_one_line_error(tiny_llp, stage1_out, tmp_path, change, who):
    ckpt = weights(stage1_out / "models_step1" / "MMIL_Net.pt")
    what = change(ckpt)
    bad = tmp_path / "models_step1" / "MMIL_Net.pt"
    bad.parent.mkdir()
    torch.save(ckpt, bad)
    if who == "stage2":
        code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args()], tmp_path)
    elif who == "stage1_test":
        code, out, err = call_stage(STAGE1, ["--mode", "test", *CPU, *tiny_llp.args()], tmp_path)
    else:
        code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "2", "--resume"], tmp_path)
    assert_one_line_error(code, err, bad, "architecture does not match", what)


def test_corrupt_stage1_checkpoint_is_a_one_line_error(tiny_llp, stage1_out, tmp_path):
    good = (stage1_out / "models_step1" / "MMIL_Net.pt").read_bytes()
    bad = tmp_path / "models_step1" / "MMIL_Net.pt"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 3])
    code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args()], tmp_path)
    assert_one_line_error(code, err, bad, "cannot read checkpoint")


def _stage3_csv(tiny_llp, path, edit):
    """A modality-aware label CSV for the train split (all labels kept), changed by `edit(DataFrame)`."""
    weak = llp.read_weak(tiny_llp.data / "AVVP_train.csv")
    names = [",".join(llp.CLASSES[c] for c in np.flatnonzero(r)) for r in weak.labels]
    df = pd.DataFrame({"filename": weak.filenames, "event_labels": names, "audio_labels": names,
                       "visual_labels": names})
    llp.write_tsv(edit(df), path)
    return weak


def _drop_row(df):
    return df.iloc[:-1]


def _extra_row(df):
    extra = df.iloc[[0]].copy()
    extra["filename"] = "zzzzzzzzzzz_0_10"
    return pd.concat([df, extra])


def _other_labels(df):
    df = df.copy()
    df.loc[df.index[2], ["event_labels", "audio_labels", "visual_labels"]] = "Accordion,Banjo"
    return df


def _unknown_ma_class(df):
    df = df.copy()
    df.loc[df.index[4], ["event_labels", "audio_labels"]] = "Kazoo"
    return df


@pytest.mark.parametrize("edit, needles", [
    (_drop_row, ["does not match the train split", "1 train video(s) missing", "re-run stage 2"]),
    (_extra_row, ["does not match the train split", "not in the train split, e.g. zzzzzzzzzzz_0_10"]),
    (_other_labels, ["event_labels of", "differ from"]),
    (_unknown_ma_class, ["line 6: unknown class 'Kazoo'"]),
    (None, ["modality-aware label file not found", "run stage 2 first"]),
], ids=["missing_video", "extra_video", "labels_differ", "unknown_class", "absent"])
def test_stage3_label_csv_must_match_the_train_split(tiny_llp, tmp_path, edit, needles):
    csv = tmp_path / "ma.csv"
    if edit is not None:
        _stage3_csv(tiny_llp, csv, edit)
    code, out, err = call_stage(STAGE3, ["--mode", "retrain", *CPU, *tiny_llp.args(), "--epochs", "1",
                                         "--label_ma", csv], tmp_path)
    assert_one_line_error(code, err, csv, *needles)
    assert "epoch   1/" not in out


# ----------------------------------------------------------------------------- unwritable output, disk full

def test_unwritable_model_dir_fails_before_training(tiny_llp, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "1",
                                         "--model_save_dir", blocker / "models"], tmp_path)
    assert_one_line_error(code, err, blocker / "models", "not writable")
    assert "epoch   1/" not in out


def test_unwritable_stage2_output_dir_fails_before_work(tiny_llp, stage1_out, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args(),
                                         "--model_save_dir", stage1_out / "models_step1",
                                         "--output_dir", blocker / "out"], tmp_path)
    assert_one_line_error(code, err, blocker / "out", "not writable")


def _full_disk_open(monkeypatch, module, match, after=0):
    """Make `module`'s open() send writes of temp files whose name contains `match` to /dev/full
    (a real ENOSPC) once `after` such writes have succeeded."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real_open = open
    seen = {"n": 0}

    def fake_open(file, mode="r", *args, **kwargs):
        if match in os.path.basename(str(file)) and str(file).endswith(".tmp") and ("w" in mode or "a" in mode):
            seen["n"] += 1
            if seen["n"] > after:
                return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
    return seen


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tiny_llp, tmp_path, monkeypatch):
    seen = _full_disk_open(monkeypatch, avvp.files, ".MMIL_Net.pt.", after=1)  # epoch 1 saves, epoch 2 fails
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "2"], tmp_path)
    path = tmp_path / "models_step1" / "MMIL_Net.pt"
    assert_one_line_error(code, err, path, "No space left on device", "previous file left intact")
    assert seen["n"] == 2 and "epoch   2/2" in out
    assert weights(path)["epoch"] == 1
    assert no_temp_files(path.parent)


def test_disk_full_while_writing_stage2_csv_keeps_the_previous_one(tiny_llp, stage1_out, tmp_path, monkeypatch):
    args = [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args(), "--model_save_dir", stage1_out / "models_step1"]
    code, out, err = call_stage(STAGE2, args, tmp_path)
    assert code == 0, err
    csv = tmp_path / "outputs_step2" / "modality_aware_labels.csv"
    before = csv.read_bytes()
    _full_disk_open(monkeypatch, avvp.llp, ".modality_aware_labels.csv.")
    code, out, err = call_stage(STAGE2, [*args, "--threshold_factor", "1.0"], tmp_path)
    assert_one_line_error(code, err, csv, "No space left on device", "previous file left intact")
    assert csv.read_bytes() == before
    assert no_temp_files(csv.parent)


def test_stage2_outputs_are_replaced_together_or_not_at_all(tiny_llp, stage1_out, tmp_path, monkeypatch):
    """Disk full on the LAST of stage 2's three files: the label CSV and the evidence CSV, already
    written, must not replace the previous ones either (atomic_group)."""
    args = [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args(), "--model_save_dir", stage1_out / "models_step1"]
    code, out, err = call_stage(STAGE2, args, tmp_path)
    assert code == 0, err
    folder = tmp_path / "outputs_step2"
    names = ("modality_aware_labels.csv", "dropped_labels.csv", "estimate_meta.json")
    before = {n: (folder / n).read_bytes() for n in names}
    _full_disk_open(monkeypatch, avvp.files, ".estimate_meta.json.")
    code, out, err = call_stage(STAGE2, [*args, "--threshold_factor", "1.0"], tmp_path)
    assert_one_line_error(code, err, folder / "estimate_meta.json", "No space left on device")
    assert {n: (folder / n).read_bytes() for n in names} == before
    assert no_temp_files(folder)
    # and without the fault, the new run does change the files (the test above could not pass vacuously)
    monkeypatch.undo()
    code, out, err = call_stage(STAGE2, [*args, "--threshold_factor", "1.0"], tmp_path)
    assert code == 0, err
    assert (folder / "modality_aware_labels.csv").read_bytes() != before["modality_aware_labels.csv"]


def _truth_without(tiny_llp, tmp_path, names, extra_rows=""):
    """Copies of the train truth files without the rows of `names` (plus `extra_rows`); their paths."""
    out = []
    for kind in ("audio", "visual"):
        lines = (tiny_llp.data / f"synthetic_train_eval_{kind}.csv").read_text().splitlines(keepends=True)
        out.append(tmp_path / f"truth_{kind}_{len(names)}.csv")
        out[-1].write_text("".join(ln for ln in lines if ln.split("\t")[0] not in names) + extra_rows)
    return out


def test_stage2_scores_drops_only_against_truth_that_describes_its_train_videos(tiny_llp, stage1_out, tmp_path):
    """Truth of another set would make every label of the videos it lacks 'truly absent' and every
    drop of them 'right'. Scored: the train truth, also less a video or two (a video whose labels
    are all noise has no event); not scored, with a note: truth that names a video outside the
    split, or describes under 90% of its videos."""
    args = [*CPU2, *tiny_llp.args(), "--model_save_dir", stage1_out / "models_step1"]
    meta_path = tmp_path / "outputs_step2" / "estimate_meta.json"
    train = llp.read_weak(tiny_llp.data / "AVVP_train.csv").filenames
    events = [llp.read_dense(tiny_llp.data / f"synthetic_train_eval_{k}.csv") for k in ("audio", "visual")]
    described = [f for f in train if f in set(events[0]["filename"]) | set(events[1]["filename"])]
    assert len(described) >= 30  # the tiny set's truth describes (nearly) every train video

    def estimate(truth):
        code, out, err = call_stage(STAGE2, [*args, "--train_truth_audio", truth[0], "--train_truth_visual", truth[1]],
                                    tmp_path)
        assert code == 0, err
        return out, json.loads(meta_path.read_text())

    out, meta = estimate(_truth_without(tiny_llp, tmp_path, []))
    assert "dropped visual labels vs truth: precision" in out and "quality" in meta
    out, meta = estimate(_truth_without(tiny_llp, tmp_path, described[:1]))
    assert "note: dropped labels not scored" not in out and "quality" in meta
    assert meta["quality"]["audio"]["weak_labels"] == int(llp.read_weak(tiny_llp.data / "AVVP_train.csv").labels.sum())
    # fewer than 90% of the 32 videos: 28.8 needed
    gone = described[:len(described) - 28]
    truth = _truth_without(tiny_llp, tmp_path, gone)
    out, meta = estimate(truth)
    assert (f"note: dropped labels not scored: the train truth ({truth[0]}, {truth[1]}) is not that of this train split "
            f"(it describes 28 of the {len(train)} train videos)") in out
    assert "vs truth" not in out and "quality" not in meta
    # a video that is not in the train split
    truth = _truth_without(tiny_llp, tmp_path, [], extra_rows="zzzzzzzzzzz_0_10\t0\t3\tSpeech\n")
    out, meta = estimate(truth)
    assert "(zzzzzzzzzzz_0_10 is not a train video)" in out and "quality" not in meta


def test_calibrated_estimator_needs_the_val_splits_truth(tiny_llp, stage1_out, tmp_path):
    """--estimator calibrated learns from the val videos' dense truth; eval files that leave val out would
    make every val label 'absent' in both modalities: a one-line error naming the files, no output."""
    test_only = tmp_path / "eval"
    test_only.mkdir()
    val = set(llp.read_weak(tiny_llp.data / "AVVP_val_pd.csv").filenames)
    for kind in ("audio", "visual"):
        lines = (tiny_llp.data / f"AVVP_eval_{kind}.csv").read_text().splitlines(keepends=True)
        (test_only / f"AVVP_eval_{kind}.csv").write_text(
            "".join([lines[0]] + [x for x in lines[1:] if x.split("\t")[0] not in val]))
    out_dir = tmp_path / "s2"
    code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(eval_audio=test_only / "AVVP_eval_audio.csv",
                                                              eval_visual=test_only / "AVVP_eval_visual.csv"),
                                         "--model_save_dir", stage1_out / "models_step1", "--output_dir", out_dir,
                                         "--estimator", "calibrated"], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{test_only / 'AVVP_eval_audio.csv'}" in err and "describes 0 of the 8 val videos" in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_atomic_group_renames_all_at_the_end_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError):
        with atomic_group():
            atomic_write_text(a, "new a")
            assert a.read_text() == "old a"  # written, not yet renamed
            raise RuntimeError("boom")
    assert a.read_text() == "old a" and b.read_text() == "old b" and sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
    with atomic_group():
        atomic_write_text(a, "new a")
        with atomic_group():  # nested: the outer group renames
            atomic_write_text(b, "new b")
        assert b.read_text() == "old b"
    assert a.read_text() == "new a" and b.read_text() == "new b" and sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
    atomic_write_text(a, "alone")  # outside a group: renamed at once
    assert a.read_text() == "alone"


def test_failed_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(avvp.files.os, "replace", full)
    with pytest.raises(AVVPError, match=r"f\.json: No space left on device \(previous file left intact\)"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


# ----------------------------------------------------------------------------- kill -9

def test_kill9_during_atomic_writes_never_leaves_a_truncated_target(tmp_path):
    """A child process rewrites a 4 MB .npy through atomic_path in a loop and is SIGKILLed at random
    moments (mid-write, mid-fsync, mid-rename): the target is always absent or a complete array."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    target = tmp_path / "big.npy"
    n = 1 << 20
    rng = random.Random(0)
    values = []
    for attempt in range(10):
        pid = os.fork()
        if pid == 0:  # child: numpy and atomic_path only, never returns into pytest
            try:
                i = attempt * 100000
                while True:
                    i += 1
                    with atomic_path(target) as tmp:
                        with open(tmp, "wb") as f:
                            np.save(f, np.full(n, i, dtype=np.float32))
            finally:
                os._exit(1)
        if attempt in (0, 9):  # make sure some writes land: wait for one of this child's files first
            deadline = time.time() + 30
            while time.time() < deadline and not (target.exists() and np.load(target)[0] > attempt * 100000):
                time.sleep(0.005)
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if target.exists():
            arr = np.load(target)      # raises on a truncated file
            assert arr.shape == (n,) and arr.dtype == np.float32 and (arr == arr[0]).all()
            values.append(int(arr[0]))
    assert len(set(values)) >= 2, values   # the writes did land between kills
    # a kill can leave the writer's hidden temp file behind, never a damaged target
    assert all(f == "big.npy" or (f.startswith(".big.npy.") and f.endswith(".tmp")) for f in os.listdir(tmp_path))


# ----------------------------------------------------------------------------- resume

def _assert_same_run(a, b):
    """Two model folders hold the same final checkpoint weights, optimizer state and metrics."""
    ca, cb = weights(a / "MMIL_Net.pt"), weights(b / "MMIL_Net.pt")
    assert ca["epoch"] == cb["epoch"]
    assert_same_state(ca["model"], cb["model"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert_same_state(sa[k], sb[k])
    assert ca["optimizer"]["param_groups"][0]["lr"] == cb["optimizer"]["param_groups"][0]["lr"]
    assert ca["metrics"] == cb["metrics"]
    for f in ("val_metrics.json", "test_metrics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_resume_matches_an_uninterrupted_run(tiny_llp, reference_2_epochs, tmp_path):
    base = [*TRAIN1, *tiny_llp.args()]
    with lr_every_epoch():
        code, out, err = call_stage(STAGE1, [*base, "--epochs", "1"], tmp_path)
        assert code == 0, err
        code, out, err = call_stage(STAGE1, [*base, "--epochs", "2", "--resume"], tmp_path)
    assert code == 0, err
    assert "after epoch 1" in out and "epoch   1/2" not in out and "epoch   2/2" in out
    ckpt = weights(tmp_path / "models_step1" / "MMIL_Net.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 0.25)
    _assert_same_run(tmp_path / "models_step1", reference_2_epochs)


@pytest.mark.parametrize("flags", [{"capturable": True, "fused": True}, {"capturable": True}, {"foreach": True}],
                         ids=["graph path, fused", "graph path, foreach", "eager CUDA"])
def test_resume_of_a_checkpoint_saved_with_another_optimizer_implementation(tiny_llp, reference_2_epochs, tmp_path,
                                                                              flags):
    """A GPU run's checkpoint records how its Adam ran (capturable, maybe fused). Resumed on the CPU,
    the optimizer keeps this process's way of computing the update: torch would take the saved flags
    (capturable alone fails on CPU tensors, fused computes other float sums), and the resumed run
    would then not end like the uninterrupted CPU run."""
    base = [*TRAIN1, *tiny_llp.args()]
    with lr_every_epoch():
        code, out, err = call_stage(STAGE1, [*base, "--epochs", "1"], tmp_path)
    assert code == 0, err
    path = tmp_path / "models_step1" / "MMIL_Net.pt"
    ckpt = weights(path)
    for g in ckpt["optimizer"]["param_groups"]:
        assert g["capturable"] is False and not g["fused"] and not g["foreach"]  # what a CPU run saves
        g.update(flags)
    torch.save(ckpt, path)
    if flags == {"capturable": True}:  # what torch alone makes of it: the test below is not vacuous
        net = _fresh_net()
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)
        opt.load_state_dict(ckpt["optimizer"])
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        with pytest.raises(Exception, match="capturable"):
            opt.step()
    with lr_every_epoch():
        code, out, err = call_stage(STAGE1, [*base, "--epochs", "2", "--resume"], tmp_path)
    assert code == 0, err
    assert "after epoch 1" in out and "epoch   2/2" in out
    resumed = weights(path)
    assert all(g["capturable"] is False and g["fused"] is None and g["foreach"] is None
               for g in resumed["optimizer"]["param_groups"])
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 0.25)  # hyperparameters: saved ones
    _assert_same_run(tmp_path / "models_step1", reference_2_epochs)


def _fresh_net():
    from avvp.model import MMIL_Net
    torch.manual_seed(0)
    return MMIL_Net()


def test_resume_after_sigkill_of_a_real_training_run(tiny_llp, tmp_path):
    """Stage 1 in a real process is SIGKILLed as soon as its epoch-1 checkpoint lands (it is then
    inside epoch 2 of 6); --resume continues from the last completed epoch and ends exactly like the
    uninterrupted run (the released schedule: StepLR(10), in both)."""
    models = tmp_path / "models_step1"
    path = models / "MMIL_Net.pt"
    argv, cwd = stage_command(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "6",
                                       "--model_save_dir", models])
    proc = subprocess.Popen(argv, cwd=cwd, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert path.exists(), f"no checkpoint appeared (exit {proc.poll()}): {proc.stderr.read() if proc.poll() else ''}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL       # killed mid-run, not finished
    done = weights(path)["epoch"]                    # complete and loadable
    assert 1 <= done < 6
    target = tmp_path / "ref"
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", done + 1,
                                         "--model_save_dir", target], tmp_path)
    assert code == 0, err
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", done + 1,
                                         "--resume", "--model_save_dir", models], tmp_path)
    assert code == 0, err
    assert f"after epoch {done}" in out
    _assert_same_run(models, target)


# ----------------------------------------------------------------------------- non-finite loss

def test_non_finite_loss_stops_training_naming_epoch_and_batch(tiny_llp, tmp_path, monkeypatch):
    real = avvp.engine.mmil_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        loss, nce = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:          # epoch 2, batch 1 (2 batches per epoch)
            loss = loss * float("inf")
        return loss, nce

    monkeypatch.setattr(avvp.engine, "mmil_loss", exploding)
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "3"], tmp_path)
    assert_one_line_error(code, err, "non-finite loss (inf) at epoch 2, batch 1 of 2", "last good checkpoint")
    ckpt = weights(tmp_path / "models_step1" / "MMIL_Net.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_weights_metrics_and_stage2_csv(tiny_llp, stage1_out, tmp_path):
    code, out, err = call_stage(STAGE1, [*TRAIN1, *tiny_llp.args(), "--epochs", "1"], tmp_path)
    assert code == 0, err
    a, b = stage1_out / "models_step1", tmp_path / "models_step1"
    assert_same_state(weights(a / "MMIL_Net.pt")["model"], weights(b / "MMIL_Net.pt")["model"])
    for f in ("val_metrics.json", "test_metrics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    outs = []
    for i in range(2):
        out_dir = tmp_path / f"s2_{i}"
        code, out, err = call_stage(STAGE2, [*CPU2, *tiny_llp.args(), *tiny_llp.truth_args(), "--seed", "7",
                                             "--model_save_dir", a, "--output_dir", out_dir], tmp_path)
        assert code == 0, err
        outs.append(out_dir)
    for f in ("modality_aware_labels.csv", "dropped_labels.csv"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    m0, m1 = (json.loads((o / "estimate_meta.json").read_text()) for o in outs)
    for m in (m0, m1):
        m.pop("args")
    assert m0 == m1
