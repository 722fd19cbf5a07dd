"""Shared test fixtures: a tiny synthetic LLP set built once for the whole test folder, and two ways
to run a stage's main_avvp.py on it (a real subprocess, or in-process for monkeypatching and speed).

    def test_x(tiny_llp, tmp_path):
        r = run_stage("step1_train_base_model", ["--mode", "train", *tiny_llp.args(), "--epochs", "1"], tmp_path)
        code, out, err = call_stage("step1_train_base_model", [...], tmp_path)
"""
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE1, STAGE2, STAGE3 = "step1_train_base_model", "step2_find_exchange", "step3_retrain"
TINY_SIZES = dict(num_train=32, num_val=8, num_test=8, seed=1)
# the real LLP annotation files (and one LLP video), when the tester has them: AVVP_LLP_DIR=<folder>
LLP_DIR = Path(os.environ["AVVP_LLP_DIR"]) if os.environ.get("AVVP_LLP_DIR") else None
LLP_SKIP = "real LLP files not given: set AVVP_LLP_DIR to the folder that holds them"


def llp_file(name):
    """A file of AVVP_LLP_DIR, or a clean skip when the folder or the file is not there."""
    if LLP_DIR is None or not (LLP_DIR / name).is_file():
        pytest.skip(LLP_SKIP if LLP_DIR is None else f"{LLP_DIR / name} not present")
    return LLP_DIR / name


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; benchmarks/gpu_run.sh runs them)")


class TinyLLP:
    """A synthetic LLP set on disk: `root/data` (label files) and `root/feats` (vggish/, res152/, r2plus1d_18/)."""

    def __init__(self, root):
        self.root = Path(root)
        self.data = self.root / "data"
        self.feats = self.root / "feats"

    def feature_dir(self, modality):
        return self.feats / {"audio": "vggish", "video": "res152", "st": "r2plus1d_18"}[modality]

    def args(self, **override):
        """Path flags of every stage pointing at this set (plus --no_progress); override=dict(label_train=...)."""
        from avvp.config import path_args
        return path_args(self.data, self.feats, **override) + ["--no_progress"]

    def truth_args(self):
        """Stage 2's flags for the synthetic train truth."""
        return ["--train_truth_audio", str(self.data / "synthetic_train_eval_audio.csv"),
                "--train_truth_visual", str(self.data / "synthetic_train_eval_visual.csv")]

    def copy(self, dest):
        """A private copy to damage in a test (a few MB)."""
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns(".packed"))
        return TinyLLP(dest)


@pytest.fixture(scope="package")
def tiny_llp(tmp_path_factory):
    """32 train / 8 val / 8 test synthetic videos, built once for all tests: do not modify (see mutable_llp)."""
    from avvp import synth
    root = tmp_path_factory.mktemp("tiny_llp")
    synth.generate(root / "data", root / "feats", progress=False, **TINY_SIZES)
    return TinyLLP(root)


@pytest.fixture(scope="package")
def stage1_out(tiny_llp, tmp_path_factory):
    """A 1-epoch stage-1 run (seed 1) on the tiny set: tmp folder holding models_step1/. Do not modify."""
    import torch
    tmp = tmp_path_factory.mktemp("stage1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the float sums of the one-thread subprocesses, whichever module asks first
    try:
        code, out, err = call_stage(STAGE1, ["--mode", "train", "--device", "cpu", "--batch-size", "16",
                                             *tiny_llp.args(), "--epochs", "1"], tmp)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    return tmp


@pytest.fixture
def mutable_llp(tiny_llp, tmp_path):
    """A per-test copy of tiny_llp that the test may damage."""
    return tiny_llp.copy(tmp_path / "llp")


def run_stage(step, args, tmp=None, env=None, timeout=300, **popen):
    """Run `python main_avvp.py ARGS` in the stage folder as a real subprocess; returns CompletedProcess.

    tmp: when given, --model_save_dir / --output_dir / --label_ma default to folders under tmp (see
    _default_outputs), so that stages run in one tmp hand off to each other.
    env: extra environment variables (OMP_NUM_THREADS=1 by default, for speed on busy machines).
    """
    args = [str(a) for a in args]
    if tmp is not None:
        args = _default_outputs(step, args, Path(tmp))
    return subprocess.run([sys.executable, "main_avvp.py", *args], cwd=ROOT / step, capture_output=True,
                          text=True, timeout=timeout, env=stage_env(env), **popen)


def stage_env(extra=None):
    """Environment for a stage subprocess: the repo on PYTHONPATH (avvp need not be installed) and
    OMP_NUM_THREADS=1 (fast on busy machines, and the same float sums as an in-process run with
    torch.set_num_threads(1))."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.update(extra or {})
    return env


def stage_command(step, args):
    """(argv, cwd) to start a stage yourself (e.g. subprocess.Popen(argv, cwd=cwd, env=stage_env()) to kill it)."""
    return [sys.executable, "main_avvp.py", *map(str, args)], ROOT / step


_STAGE_MAINS = {}


def load_stage_main(step):
    """Import a stage's main_avvp.py in-process with its own modules (dataloader.py, model.py, ...),
    not another stage's nor a same-named module imported before (benchmarks/estimators.py)."""
    if step in _STAGE_MAINS:
        return _STAGE_MAINS[step]
    folder = str(ROOT / step)
    local = [p.stem for p in (ROOT / step).glob("*.py") if p.stem != "main_avvp"]
    shadowed = {k: sys.modules.pop(k) for k in local if k in sys.modules}
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"_stage_main_{step}", ROOT / step / "main_avvp.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(folder)
        for k in local:
            sys.modules.pop(k, None)
        sys.modules.update(shadowed)
    _STAGE_MAINS[step] = mod
    return mod


def stage_args(step, *argv):
    """A stage's parsed flags (its own get_args: shared flags and its method knobs), defaults unless
    given in argv; for building a Trainer or a split in-process."""
    return load_stage_main(step).get_args([str(a) for a in argv])


def call_stage(step, args, tmp=None):
    """Run a stage's main(argv) in this process (cwd = the stage folder); returns (exit code, stdout, stderr).

    Exit code 0 when main returns; the SystemExit code otherwise (2 for a one-line AVVPError).
    Unlike run_stage, monkeypatches apply. Other exceptions propagate (a traceback is a test failure).
    """
    args = [str(a) for a in args]
    if tmp is not None:
        args = _default_outputs(step, args, Path(tmp))
    main = load_stage_main(step).main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(ROOT / step) if hasattr(contextlib, "chdir") else _chdir(ROOT / step):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _default_outputs(step, args, tmp):
    """Stages chained inside one tmp folder: stage 1 writes tmp/models_step1, stage 2 reads it and
    writes tmp/outputs_step2, stage 3 reads that and writes tmp/models_step3."""
    if "--model_save_dir" not in args:
        args = args + ["--model_save_dir", str(tmp / ("models_step3" if step == STAGE3 else "models_step1"))]
    if step == STAGE2 and "--output_dir" not in args:
        args = args + ["--output_dir", str(tmp / "outputs_step2")]
    if step == STAGE3 and "--label_ma" not in args:
        args = args + ["--label_ma", str(tmp / "outputs_step2" / "modality_aware_labels.csv")]
    return args
