"""Pure speed-ups must not change what is computed or written: background checkpoint writes
(same bytes, state taken at save time, order kept, errors surfaced) and the phase clock."""
import errno
import os
import re
import sys
import time

import numpy as np
import pytest
import torch

import avvp.utils
from avvp import engine
from avvp.model import MMIL_Net
from avvp.utils import AVVPError, BackgroundSaver, PhaseClock, process_age
from conftest import STAGE1, STAGE2, STAGE3, run_stage, stage_env


def test_background_save_writes_the_state_as_it_was_at_save_time(tmp_path):
    w = torch.arange(6, dtype=torch.float32)
    obj = {"model": {"w": w}, "nested": [w, (w, 3)], "epoch": 2}
    saver = BackgroundSaver()
    saver.save(obj, tmp_path / "c.pt")
    w.add_(100.0)  # training goes on while the file is written
    saver.wait()
    got = torch.load(tmp_path / "c.pt", weights_only=False)
    assert torch.equal(got["model"]["w"], torch.arange(6, dtype=torch.float32))
    assert torch.equal(got["nested"][1][0], torch.arange(6, dtype=torch.float32)) and got["nested"][1][1] == 3
    assert got["epoch"] == 2 and os.listdir(tmp_path) == ["c.pt"]


def test_background_saves_land_in_call_order(tmp_path):
    saver = BackgroundSaver()
    for epoch in range(1, 6):
        saver.save({"epoch": epoch, "w": torch.full((1000,), float(epoch))}, tmp_path / "c.pt")
    saver.wait()
    got = torch.load(tmp_path / "c.pt", weights_only=False)
    assert got["epoch"] == 5 and float(got["w"][0]) == 5.0 and os.listdir(tmp_path) == ["c.pt"]


def test_background_save_error_is_raised_at_the_next_call_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    saver = BackgroundSaver()
    saver.save({"epoch": 1}, path)
    saver.wait()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(avvp.utils.os, "replace", full)
    saver.save({"epoch": 2}, path)  # returns at once; the write fails on the thread
    with pytest.raises(AVVPError, match=r"c\.pt: No space left on device \(previous file left intact\)"):
        saver.wait()
    saver.wait()  # reported once
    assert torch.load(path, weights_only=False)["epoch"] == 1 and os.listdir(tmp_path) == ["c.pt"]


def recipe_args(**override):
    """The training flags the engine reads, at the recipe's values (eager, CPU)."""
    return engine.default_args(graph="off", no_progress=True, **override)


def random_split(n, seed, label_rate):
    """n random LLP-shaped videos (segment-pooled res152) on the CPU, with random weak labels."""
    g = torch.Generator().manual_seed(seed)
    feats = {"audio": torch.randn(n, 10, 128, generator=g), "video": torch.rand(n, 10, 2048, generator=g),
             "st": torch.randn(n, 10, 512, generator=g)}
    y = (torch.rand(n, 25, generator=g) < label_rate).float().numpy()
    return engine.Split([f"v{i}_0_10" for i in range(n)], y, feats, torch.device("cpu"))


def small_trainer(tmp_path=None, epochs=1, with_truth=False):
    """(args, split, trainer): an eager CPU trainer of the recipe on 8 random videos, batch 4."""
    over = {"model_save_dir": str(tmp_path)} if tmp_path is not None else {}
    args = recipe_args(batch_size=4, epochs=epochs, **over)
    split = random_split(8, seed=0, label_rate=0.2)
    if with_truth:  # fit() evaluates val and test
        split.gt_a = split.gt_v = torch.zeros(8, 25, 10, dtype=torch.uint8).numpy()
    torch.manual_seed(0)
    return args, split, engine.Trainer(args, MMIL_Net(), split, engine.weak_targets(split.labels, 0.1),
                                       torch.device("cpu"))


def test_background_checkpoint_is_byte_identical_to_a_synchronous_one(tmp_path):
    args, _, trainer = small_trainer()
    trainer.train_epoch(1)
    engine.save_checkpoint(tmp_path / "sync.pt", trainer, args, 1, {"val": {"x": 1.0}}, "stage1")
    saver = BackgroundSaver()
    engine.save_checkpoint(tmp_path / "bg.pt", trainer, args, 1, {"val": {"x": 1.0}}, "stage1", saver=saver)
    saver.wait()
    assert (tmp_path / "sync.pt").read_bytes() == (tmp_path / "bg.pt").read_bytes()


def _saved_bytes(obj, path):
    """What torch.save writes; the file's stem names the archive's folder, so only the folder varies."""
    path.mkdir()
    torch.save(obj, path / "c.pt")
    return (path / "c.pt").read_bytes()


def _checkpoint_like():
    """Nested like a checkpoint, with the tensors that can make a copy go wrong: 0-dim, bool, int,
    float64, empty, a view at an offset, a non-contiguous one and a state dict's _metadata."""
    import collections
    torch.manual_seed(0)
    sd = collections.OrderedDict([("w", torch.randn(4, 3)), ("b", torch.randn(3))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    base = torch.arange(10, dtype=torch.float64)
    return {"model": sd, "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(4, 3)}},
                                       "param_groups": [{"lr": 3e-4, "params": [0]}]},
            "mask": torch.rand(5) > 0.5, "ids": torch.arange(6).view(2, 3), "empty": torch.zeros(0, 4),
            "view": base[3:7], "strided": torch.randn(3, 4).t(), "rng": (torch.randint(0, 255, (16,), dtype=torch.uint8), 5),
            "epoch": 2}


@pytest.mark.parametrize("gather", ["contiguous", "none"])
def test_host_snapshot_writes_the_bytes_of_a_per_tensor_copy(tmp_path, gather):
    """HostSnapshot gathers the GPU tensors into one copy per dtype; run here on CPU tensors (the
    gather path is device-agnostic), the file is byte for byte what the per-tensor copy gives,
    and the values are those of snapshot time."""
    obj = _checkpoint_like()
    pick = (lambda t: t.is_contiguous()) if gather == "contiguous" else (lambda t: False)
    snap = avvp.utils.HostSnapshot(obj, gather=pick)
    want = _saved_bytes(avvp.utils._host_copy(obj), tmp_path / "want.pt")
    if gather == "contiguous":
        assert len(snap._pieces) == 9  # all but the strided one went through the gathered copy
        assert len({id(p[0]) for p in snap._pieces}) == 5  # one buffer per dtype: f32, f64, bool, i64, u8
    obj["model"]["w"].add_(1.0)  # training goes on after the snapshot
    obj["optimizer"]["state"][0]["step"].add_(1.0)
    got = snap.resolve()
    assert _saved_bytes(got, tmp_path / "got.pt") == want
    assert got["model"]._metadata == {"": {"version": 1}} and got["rng"][1] == 5
    assert got["strided"].stride() == obj["strided"].stride()


def test_a_trainer_checkpoint_through_the_gathered_copy_is_byte_identical(tmp_path):
    _, _, trainer = small_trainer()
    trainer.train_epoch(1)
    state = trainer.state()
    snap = avvp.utils.HostSnapshot(state, gather=lambda t: t.is_contiguous())
    assert len(snap._pieces) > 100  # weights, Adam's moments and steps
    assert _saved_bytes(snap.resolve(), tmp_path / "a.pt") == _saved_bytes(avvp.utils._host_copy(state), tmp_path / "b.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_snapshot_of_gpu_tensors_equals_the_per_tensor_copy(tmp_path):
    obj = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _checkpoint_like().items()}
    obj["model"] = {k: v.cuda() for k, v in _checkpoint_like()["model"].items()}
    want = _saved_bytes(avvp.utils._host_copy(obj), tmp_path / "want.pt")
    snap = avvp.utils.HostSnapshot(obj)
    obj["model"]["w"].add_(1.0)  # queued after the snapshot's copy on the same stream
    assert _saved_bytes(snap.resolve(), tmp_path / "got.pt") == want


def test_fit_writes_each_epoch_once_and_the_last_with_its_test_metrics(tmp_path, monkeypatch):
    """The last epoch's checkpoint is written once, after the test pass, not once before it and
    again with the test metrics; earlier epochs go through the background saver."""
    args, split, trainer = small_trainer(tmp_path, epochs=3, with_truth=True)
    calls, real = [], engine.save_checkpoint

    def spy(path, trainer, args, epoch, metrics, stage, extra=None, saver=None):
        calls.append((epoch, sorted(metrics), saver is not None))
        return real(path, trainer, args, epoch, metrics, stage, extra, saver)

    monkeypatch.setattr(engine, "save_checkpoint", spy)
    engine.fit(args, trainer, split, split, "stage1", torch.device("cpu"))
    assert calls == [(1, ["val"], True), (2, ["val"], True), (3, ["test", "val"], False)]
    ckpt = torch.load(tmp_path / "MMIL_Net.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and sorted(ckpt["metrics"]) == ["test", "val"]


def test_the_epoch_that_captures_the_graph_says_what_capturing_cost(tmp_path, capsys):
    """On CUDA the first full batch captures the step (warm-up steps, then recording); that epoch's
    line says how long each took. Simulated here: capturing needs CUDA."""
    args, split, trainer = small_trainer(tmp_path, epochs=2, with_truth=True)
    real = trainer.train_epoch

    def capturing(epoch):  # trains eagerly, and leaves the trainer as a capturing epoch would
        graph, trainer.graph = trainer.graph, None
        loss = real(epoch)
        if graph is None:
            graph, trainer.capture_seconds = object(), (0.5, 0.25)
        trainer.graph = graph
        return loss

    trainer.train_epoch = capturing
    engine.fit(args, trainer, split, split, "stage1", torch.device("cpu"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and re.search(r" train [\d.]+s \(graph warm-up 0\.50s, capture 0\.25s\) val ", lines[0])
    assert "graph" not in lines[1]


def test_phase_clock_sums_phases_and_accounts_for_the_rest():
    clock = PhaseClock()
    for _ in range(2):
        with clock("train"):
            time.sleep(0.03)
    with clock("load"):
        time.sleep(0.02)
    assert clock.last >= 0.02 and clock.last == clock.seconds["load"]  # the one "load" block so far
    time.sleep(0.02)
    line = clock.line()
    fig = {k: float(v) for k, v in re.findall(r"([a-z-]+) ([\d.]+)s", line)}
    assert fig["train"] >= 0.06 and fig["load"] >= 0.02 and fig["other"] >= 0.02
    assert fig["total"] >= fig["start-up"] + fig["train"] + fig["load"] + fig["other"] - 0.02
    assert line.startswith("time: start-up ") and list(fig)[1:3] == ["train", "load"]
    assert PhaseClock.parse(f"stage output\n{line}\n") == fig  # what speed.py and fixed_cost_ab.py read
    assert PhaseClock.parse("time: cuda init 0.14s, swap passes 0.74s; total 1.00s") == {
        "cuda init": 0.14, "swap passes": 0.74, "total": 1.0}


def test_process_age_counts_from_process_start():
    age = process_age()
    if age is None:
        pytest.skip("no /proc")
    t = time.monotonic()
    assert 0.0 < age < t + 1.0  # this process started after boot, and a while ago (imports ran)


def _inputs(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 10, 128, generator=g), torch.rand(b, 80, 2048, generator=g), torch.randn(b, 10, 512, generator=g)


def test_stacked_modalities_compute_the_same_function_and_gradients():
    torch.manual_seed(0)
    plain = MMIL_Net(dropout=0.0)
    stacked = MMIL_Net(dropout=0.0, stack_modalities=True)
    stacked.load_state_dict(plain.state_dict())
    a, v, s = _inputs()
    y = (torch.rand(6, 25) < 0.2).float()
    from avvp.model import mmil_loss
    outs = []
    for net in (plain, stacked):
        out = net(a, v, s)
        loss, _ = mmil_loss(out, y, y, 0.9 * y + 0.05)
        net.zero_grad()
        loss.backward()
        outs.append((out, loss))
    (o1, l1), (o2, l2) = outs
    for f in o1._fields:
        assert torch.allclose(getattr(o1, f), getattr(o2, f), atol=1e-5), f
    assert abs(l1.item() - l2.item()) < 1e-5
    for (name, p1), p2 in zip(plain.named_parameters(), stacked.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-5, rtol=1e-4), name
    # and it is a different code path: the layer runs once on a (2B, 10, d) batch
    calls = []
    h = stacked.hat_encoder.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    stacked(a, v, s)
    h.remove()
    assert calls == [(12, 10, 512)]


def test_fused_adam_follows_the_same_loss_trajectory():
    split = random_split(32, seed=1, label_rate=0.15)
    torch.manual_seed(0)
    init = MMIL_Net(dropout=0.0).state_dict()
    runs = {}
    for fused in (False, True):
        args = recipe_args(lr_step=2, batch_size=8, fused_adam=fused)
        net = MMIL_Net(dropout=0.0)
        net.load_state_dict(init)
        tr = engine.Trainer(args, net, split, engine.weak_targets(split.labels, 0.1), torch.device("cpu"))
        assert tr.opt.defaults.get("fused") is (True if fused else None)
        runs[fused] = [tr.train_epoch(e) for e in range(1, 4)]
    assert runs[False][-1] < runs[False][0]  # it trains
    assert runs[False] == pytest.approx(runs[True], rel=1e-4, abs=1e-5)


def test_fused_adam_auto_means_fused_exactly_where_the_step_is_captured():
    from avvp.engine import build_optimizer, default_args, uses_fused_adam
    parse = lambda *argv: engine.parse_args(engine.stage_parser(None, "train"), list(argv)).fused_adam  # noqa: E731
    assert (parse(), parse("--fused_adam"), parse("--no-fused_adam"), parse("--fused_adam", "off")) == (
        "auto", "on", "off", "off")
    model = MMIL_Net()
    for choice, eager, captured in [("auto", None, True), ("on", True, True), ("off", None, None),
                                    (True, True, True), (False, None, None)]:
        args = default_args(fused_adam=choice)
        # capturable=True is what Trainer asks for on the CUDA graph path (the optimizer is only built here)
        got = [build_optimizer(args, model, capturable=c)[0].defaults["fused"] for c in (False, True)]
        assert got == [eager, captured], choice
        assert uses_fused_adam(args, True) is bool(captured)
    with pytest.raises(ValueError, match="fused_adam must be auto, on or off"):
        uses_fused_adam(default_args(fused_adam="yes"), True)
    # the CPU default is torch's per-tensor update, as before: CPU runs keep their bits
    _, _, tr = small_trainer()
    assert not tr.use_graph and tr.opt.defaults["fused"] is None and tr.opt.defaults["capturable"] is False
    assert tr.adam_update == "per tensor"  # what the training-path line (and graph_check) report


def test_run_program_freezes_the_imports_before_main_and_the_run_after_it():
    import gc
    kept, seen = [], []

    def main():
        seen.append(gc.get_freeze_count())
        kept.extend([] for _ in range(1000))  # 1,000 gc-tracked objects made by the run
        return 7

    try:
        gc.unfreeze()
        gc.disable()  # as an entry script does for its imports
        assert avvp.utils.run_program(main) == 7
        assert gc.isenabled()  # turned back on for the run
        assert seen[0] > 10000  # the imports (torch, numpy, pytest, ...) were frozen before main ran
        assert gc.get_freeze_count() >= seen[0] + 1000  # and what main built, after it
        gc.unfreeze()

        def failing():
            kept.append([])
            sys.exit(2)
        with pytest.raises(SystemExit):
            avvp.utils.run_program(failing)
        assert gc.get_freeze_count() > 10000  # an error exit is spared the collection too
    finally:
        gc.unfreeze()  # this test runs inside pytest, which goes on: give the objects back to the collector
        gc.enable()




FAST_EXIT_SCRIPT = """
import atexit, sys
from avvp.utils import cli, run_program, AVVPError

atexit.register(lambda: print("atexit ran"))

@cli
def main():
    mode = sys.argv[1]
    sys.stdout.write("result line, no newline yet")  # still in the buffer when main returns
    if mode == "error":
        raise AVVPError("bad input")
    return 3 if mode == "code" else None

run_program(main, fast_exit=True)
"""


@pytest.mark.parametrize("mode, code, tail", [("ok", 0, ""), ("code", 3, ""), ("error", 2, "atexit ran\n")])
def test_fast_exit_flushes_output_keeps_the_exit_code_and_skips_teardown_only_on_success(tmp_path, mode, code, tail):
    import subprocess
    script = tmp_path / "prog.py"
    script.write_text(FAST_EXIT_SCRIPT)
    r = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                       env=stage_env({"PYTHONUNBUFFERED": ""}))
    assert r.returncode == code
    assert r.stdout == "result line, no newline yet" + tail  # flushed; atexit handlers run only on an error exit
    assert r.stderr == ("error: bad input\n" if mode == "error" else "")


def test_the_three_stage_programs_import_neither_pandas_nor_torch_dynamo(tiny_llp, tmp_path):
    """Each import costs a stage process as much as a second or two on a machine whose install
    keeps no bytecode: torch.optim's classes import torch._dynamo (avvp/optim.py avoids them),
    and pandas is only needed for parse mode's tables (avvp.llp.Table serves the stages)."""
    runs = [(STAGE1, ["--mode", "train", "--epochs", "1"]), (STAGE2, ["--mode", "estimate_labels"]),
            (STAGE3, ["--mode", "retrain", "--epochs", "1"])]
    for step, mode in runs:
        # python -X importtime lists every module the process imports, on stderr
        r = run_stage(step, [*mode, *tiny_llp.args()], tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                    if line.startswith("import time:")}
        assert {"torch", "numpy", "avvp.optim", "avvp.llp"} <= imported, step  # the listing works
        assert "pandas" not in imported and "torch._dynamo" not in imported, step


def test_llp_tables_are_written_byte_for_byte_as_pandas_wrote_them(tmp_path):
    """avvp.llp.Table replaced pandas on the stages' path: the files they write must not change."""
    import csv

    import numpy as np
    import pandas as pd

    from avvp import llp
    g = np.random.default_rng(0)
    cols = {"filename": np.asarray([f"vid{i:08d}_0_10" for i in range(40)], dtype=object),
            "onset": g.integers(0, 10, 40), "flag": g.random(40) < 0.5,
            "p32": g.random(40, dtype=np.float32).round(6), "p64": np.round(g.random(40), 6),
            "wide": np.r_[g.standard_normal(38) * 1e8, np.nan, 1e-9]}
    llp.write_tsv(llp.Table(cols), tmp_path / "ours.csv")
    pd.DataFrame(cols).to_csv(tmp_path / "pandas.csv", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    llp.write_tsv(llp.Table({"filename": np.asarray([], dtype=object)}), tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text() == "filename\n"


class _ReplayedOnCPU(engine.EvalGraph):
    """EvalGraph with the CUDA graph stood in for by re-running the recorded forward into the
    same output tensors: everything around the graph (static index buffers, the bit-for-bit check,
    full vs partial batches, the per-model cache, the fallback) runs as on a GPU."""
    perturb = 0.0

    def _record(self, forward):
        self._forward = forward
        return forward()

    def _replay(self):
        self.replays = getattr(self, "replays", 0) + 1
        out = self._forward()
        for k in self.keys:
            self.out[k].copy_(getattr(out, k) + self.perturb)


def _eval_setup(n=10):
    split = random_split(n, seed=3, label_rate=0.2)
    torch.manual_seed(0)
    model = MMIL_Net()  # dropout 0.1: predict() must switch it off, graph or not
    partner = torch.randperm(n, generator=torch.Generator().manual_seed(1)).numpy()
    return model, split, partner


@pytest.mark.parametrize("swap", [None, "visual", "audio"])
def test_predict_from_an_eval_graph_gives_the_eager_bits(monkeypatch, swap):
    monkeypatch.setattr(engine, "EvalGraph", _ReplayedOnCPU)
    model, split, partner = _eval_setup()
    sw = None if swap is None else (partner, swap)
    want = engine.predict(model, split, batch_size=4, swap=sw)
    for _ in range(2):  # the second call replays the graph recorded by the first
        got = engine.predict(model, split, batch_size=4, swap=sw, graph=True, name="val")
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    (eg,) = engine._EVAL_GRAPHS[model].values()  # one graph, recorded by the first call
    assert eg.ok and eg.replays == 1 + 2 * 2  # its check, then 2 full batches of 4 per call (the last 2 videos eagerly)
    assert model.training  # left as it was


@pytest.mark.parametrize("fault", ["differs", "capture fails"])
def test_an_eval_graph_that_is_not_bit_identical_is_not_used(monkeypatch, capsys, fault):
    class Faulty(_ReplayedOnCPU):
        perturb = 1e-6

        def _record(self, forward):
            if fault == "capture fails":
                raise RuntimeError("operation not permitted when stream is capturing\nmore")
            return super()._record(forward)

    monkeypatch.setattr(engine, "EvalGraph", Faulty)
    model, split, partner = _eval_setup()
    want = engine.predict(model, split, batch_size=4, swap=(partner, "visual"))
    got = engine.predict(model, split, batch_size=4, swap=(partner, "visual"), graph=True, name="train")
    assert all(np.array_equal(got[k], want[k]) for k in want)
    why = ("its outputs differ from the eager forward's" if fault == "differs" else
           "capture failed (RuntimeError: operation not permitted when stream is capturing)")
    assert capsys.readouterr().out == (f"note: train: the eval forward is not replayed from a CUDA graph, {why}; "
                                       "predicting eagerly\n")


def test_eval_graphs_are_for_resident_cuda_splits_only():
    split = random_split(4, seed=0, label_rate=0.2)
    assert not engine.use_eval_graph(engine.default_args(), split)  # CPU


def test_a_run_says_when_torch_has_no_bytecode(monkeypatch, tmp_path):
    """Every stage process compiles torch from source when its bytecode is missing and cannot be
    written (an install made without it, PYTHONDONTWRITEBYTECODE set): the run says so, once."""
    import types
    assert avvp.utils.missing_bytecode_note() is None  # this install has it
    fake = types.ModuleType("fake_torch")
    fake.__cached__ = str(tmp_path / "__pycache__" / "__init__.cpython-312.pyc")
    monkeypatch.setitem(sys.modules, "fake_torch", fake)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert avvp.utils.missing_bytecode_note("fake_torch") == (
        f"note: fake_torch has no bytecode ({fake.__cached__} is missing, and PYTHONDONTWRITEBYTECODE is set), so "
        "every run compiles it from source again, seconds per process; benchmarks/precompile.py in this repository "
        "writes it once")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert f"Python could not write {tmp_path / '__pycache__'})" in avvp.utils.missing_bytecode_note("fake_torch")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "__init__.cpython-312.pyc").write_bytes(b"")
    assert avvp.utils.missing_bytecode_note("fake_torch") is None


def test_attention_without_averaging_its_unused_weights_is_bit_identical():
    """The layers pass average_attn_weights=False, which skips one reduction per attention call whose
    output nothing reads; outputs and gradients are those of the released call, bit for bit."""
    a, v, s = _inputs(b=8, seed=4)
    y = (torch.rand(8, 25, generator=torch.Generator().manual_seed(4)) < 0.2).float()
    from avvp.model import mmil_loss
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
