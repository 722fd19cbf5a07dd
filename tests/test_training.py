"""The training loop of stages 1 and 3 (avvp/training.py) in-process, on random LLP-shaped videos:
the optimizer torch builds for each --fused_adam choice, resuming a checkpoint of another
optimizer implementation, what fit() writes and prints, frame pooling in training, and the
phase clock behind each stage's `time:` line."""
import copy
import re
import time

import numpy as np
import pytest
import torch

from avvp import training
from avvp.data import Split
from avvp.model import MMIL_Net, loss_options
from avvp.timing import PhaseClock, memory_line, process_age
from conftest import STAGE1, stage_args

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def recipe_args(*argv, **override):
    """Stage 1's flags at the recipe's values (CPU, no bars), then `override` set on the namespace."""
    args = stage_args(STAGE1, "--device", "cpu", "--no_progress", *argv)
    vars(args).update(override)
    return args


def random_split(n, seed, label_rate=0.2, frames=10):
    """n random LLP-shaped videos on the CPU (res152 with `frames` frames), random weak labels,
    every video at least one."""
    g = torch.Generator().manual_seed(seed)
    feats = {"audio": torch.randn(n, 10, 128, generator=g), "video": torch.rand(n, frames, 2048, generator=g),
             "st": torch.randn(n, 10, 512, generator=g)}
    y = (torch.rand(n, 25, generator=g) < label_rate).float().numpy()
    y[np.arange(n), np.arange(n) % 25] = 1.0
    return Split([f"v{i:010d}_0_10" for i in range(n)], y, feats, CPU)


def targets(y, s=0.1):
    return y, y.copy(), (1 - s) * y + s / 2


def make_trainer(args, split, init=None, dropout=0.1):
    torch.manual_seed(0)
    net = MMIL_Net(dropout=dropout, frame_pool=args.frame_pool)
    if init is not None:
        net.load_state_dict(init)
    return training.Trainer(args, net, split, targets(split.labels), CPU, loss_options(args))


def params_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# ----------------------------------------------------------------------------- optimizer

def test_cpu_default_is_torch_adam_with_torch_default_update(capsys):
    args = recipe_args("--batch-size", "4")
    t = make_trainer(args, random_split(8, 0))
    assert type(t.opt) is torch.optim.Adam and not t.use_graph and t.graph is None
    assert t.opt.defaults["fused"] is None and t.opt.defaults["capturable"] is False
    assert t.opt.defaults["lr"] == 3e-4 and not torch.is_tensor(t.opt.param_groups[0]["lr"])
    assert isinstance(t.sched, torch.optim.lr_scheduler.StepLR) and (t.sched.step_size, t.sched.gamma) == (10, 0.1)
    assert t.adam_update == "torch's default"
    assert "training path: CPU, eager steps, 1 threads; Adam update: torch's default" in capsys.readouterr().out


def test_fused_adam_choice_means_fused_exactly_where_asked_or_captured():
    assert recipe_args().fused_adam == "auto"
    model = MMIL_Net()
    for choice, eager, captured in [("auto", None, True), ("on", True, True), ("off", None, None)]:
        args = recipe_args("--fused_adam", choice)
        # capturable=True is what Trainer asks for on the CUDA graph path (only the optimizer is built here)
        opts = [training.build_optimizer(args, model, capturable=c)[0] for c in (False, True)]
        assert [o.defaults["fused"] for o in opts] == [eager, captured], choice
        assert [o.defaults["capturable"] for o in opts] == [False, True]
        assert torch.is_tensor(opts[1].param_groups[0]["lr"]) and float(opts[1].param_groups[0]["lr"]) == pytest.approx(3e-4)


def test_fused_adam_on_the_cpu_follows_the_same_loss_trajectory():
    split = random_split(32, seed=1, label_rate=0.15)
    runs = {}
    for choice in ("off", "on"):
        t = make_trainer(recipe_args("--fused_adam", choice, "--lr_step", "2", "--batch-size", "8"), split, dropout=0.0)
        assert t.opt.defaults["fused"] is (True if choice == "on" else None)
        runs[choice] = [t.train_epoch(e) for e in range(1, 4)]
    assert runs["off"][-1] < runs["off"][0]  # it trains
    assert runs["off"] == pytest.approx(runs["on"], rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("flags", [{"capturable": True, "fused": True}, {"capturable": True}, {"foreach": True}],
                         ids=["graph path, fused", "graph path, foreach", "eager CUDA"])
def test_load_state_keeps_this_optimizer_implementation_and_continues_identically(flags):
    """A checkpoint of a GPU run records its Adam's flags (capturable, maybe fused); loaded by a CPU
    trainer, the optimizer keeps its own flags, takes the saved moments, lr and schedule, and goes
    on exactly as the trainer that saved it."""
    args = recipe_args("--batch-size", "8", "--lr_step", "1", "--lr_gamma", "0.5")
    split = random_split(24, seed=2)
    first = make_trainer(args, split)
    first.train_epoch(1)
    state = copy.deepcopy(first.state())
    for g in state["optimizer"]["param_groups"]:
        g.update(flags)
    want = first.train_epoch(2)  # the uninterrupted run (every RNG as saved: set_rng_state below restores them)
    resumed = make_trainer(args, split)
    assert not params_equal(resumed.model, first.model)
    resumed.load_state(state)
    assert {k: resumed.opt.param_groups[0][k] for k in ("capturable", "fused", "foreach")} == {
        "capturable": False, "fused": None, "foreach": None}
    assert resumed.lr() == pytest.approx(1.5e-4)  # one StepLR step of 0.5: the saved schedule
    assert float(resumed.opt.state[next(resumed.model.parameters())]["step"]) == 3.0  # 24 / 8 steps
    got = resumed.train_epoch(2)
    assert got == want and params_equal(resumed.model, first.model)
    assert resumed.lr() == first.lr() == pytest.approx(7.5e-5)


def test_resume_restores_the_batch_order_and_every_rng():
    args = recipe_args("--batch-size", "8")
    split = random_split(24, seed=3)
    t = make_trainer(args, split)
    t.train_epoch(1)
    state = copy.deepcopy(t.state())
    draws = (torch.randperm(24, generator=t.gen).tolist(), torch.rand(3).tolist(), np.random.rand(2).tolist())
    torch.manual_seed(123)
    np.random.seed(123)
    training.set_rng_state(state["rng"], t.gen)
    again = (torch.randperm(24, generator=t.gen).tolist(), torch.rand(3).tolist(), np.random.rand(2).tolist())
    assert again == draws and draws[0] != list(range(24))


# ----------------------------------------------------------------------------- fit

def fit_setup(tmp_path, epochs, n=8):
    args = recipe_args("--batch-size", "4", "--epochs", str(epochs), "--model_save_dir", str(tmp_path))
    split = random_split(n, seed=0)
    split.gt_a = split.gt_v = np.zeros((n, 25, 10), np.uint8)  # fit() evaluates val and test
    split.gt_a[:, 0, 2:5] = 1
    return args, split, make_trainer(args, split)


def test_fit_writes_each_epoch_once_and_the_last_with_its_test_metrics(tmp_path, monkeypatch):
    args, split, trainer = fit_setup(tmp_path, epochs=3)
    calls, real = [], training.save_checkpoint

    def spy(path, trainer, args, epoch, metrics, stage, extra=None):
        calls.append((epoch, sorted(metrics), (tmp_path / "MMIL_Net.pt").exists()))
        return real(path, trainer, args, epoch, metrics, stage, extra)

    monkeypatch.setattr(training, "save_checkpoint", spy)
    test = training.fit(args, trainer, split, split, "stage1", CPU, extra={"note": 5})
    assert calls == [(1, ["val"], False), (2, ["val"], True), (3, ["test", "val"], True)]
    ckpt = torch.load(tmp_path / "MMIL_Net.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and sorted(ckpt["metrics"]) == ["test", "val"] and ckpt["note"] == 5
    assert ckpt["stage"] == "stage1" and ckpt["args"]["epochs"] == 3 and ckpt["metrics"]["test"] == test
    assert ckpt["arch"] == {"num_classes": 25, "d_model": 512, "frame_pool": "early"}
    assert float(ckpt["optimizer"]["state"][0]["step"]) == 6.0  # 3 epochs of 2 batches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MMIL_Net.pt", "test_metrics.json", "val_metrics.json"]


def test_the_epoch_that_captures_the_graph_says_what_capturing_cost(tmp_path, capsys):
    """On CUDA the first full batch captures the step (warm-up steps, then recording); that epoch's
    line says how long each took. Simulated here: capturing needs CUDA."""
    args, split, trainer = fit_setup(tmp_path, epochs=2)
    real = trainer.train_epoch

    def capturing(epoch):  # trains eagerly, and leaves the trainer as a capturing epoch would
        graph, trainer.graph = trainer.graph, None
        loss = real(epoch)
        if graph is None:
            graph, trainer.capture_seconds = object(), (0.5, 0.25)
        trainer.graph = graph
        return loss

    trainer.train_epoch = capturing
    training.fit(args, trainer, split, split, "stage1", CPU)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and re.search(r" train [\d.]+s \(graph warm-up 0\.50s, capture 0\.25s\) val ", lines[0])
    assert "graph" not in lines[1]
    assert re.search(r"^peak memory: RSS [\d.]+ GiB$", out, re.M) and re.search(r"^time: .* total [\d.]+s$", out, re.M)


def test_frame_pool_early_trains_like_late():
    """--frame_pool early (res152 averaged per segment before fc_v, on loading) and late (fc_v on
    all 80 frames, the released order) compute the same function and gradients: the same training
    trajectory up to float error, dropout included (its masks do not depend on the order)."""
    split80 = random_split(16, seed=4, frames=80)
    split10 = Split(split80.filenames, split80.labels,
                    dict(split80.feats, video=split80.feats["video"].view(16, 10, 8, 2048).mean(2)), CPU)
    torch.manual_seed(0)
    init = MMIL_Net().state_dict()
    runs = {}
    for pool, split in (("late", split80), ("early", split10)):
        t = make_trainer(recipe_args("--batch-size", "8", "--frame_pool", pool), split, init)
        assert t.model.frame_pool == pool
        runs[pool] = ([t.train_epoch(e) for e in (1, 2)], t.model)
    assert runs["late"][0] == pytest.approx(runs["early"][0], rel=1e-4)
    assert runs["late"][0][1] != runs["late"][0][0]
    flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])  # noqa: E731
    late, early, start = flat(runs["late"][1].parameters()), flat(runs["early"][1].parameters()), flat(init.values())
    moved = (late - start).abs().mean()
    assert moved > 1e-4  # 4 Adam steps of lr 3e-4
    # Adam turns a float-error-sized gradient of either sign into a step of lr, so a few weights whose
    # gradient is ~0 differ by about lr; on average the two runs agree far below what training moved
    assert (late - early).abs().mean() < 1e-3 * moved and (late - early).abs().max() < 2 * 3e-4


def test_non_finite_loss_stops_the_epoch_with_one_line(monkeypatch):
    from avvp.errors import AVVPError
    args = recipe_args("--batch-size", "4")
    t = make_trainer(args, random_split(12, seed=5))
    real = training.mmil_loss
    n = {"calls": 0}

    def exploding(*a, **k):
        loss, nce = real(*a, **k)
        n["calls"] += 1
        return (loss * float("nan") if n["calls"] == 2 else loss), nce

    monkeypatch.setattr(training, "mmil_loss", exploding)
    with pytest.raises(AVVPError, match=r"non-finite loss \(nan\) at epoch 4, batch 2 of 3; training stopped"):
        t.train_epoch(4)
    assert n["calls"] == 2  # the CPU loop stops at the bad batch


# ----------------------------------------------------------------------------- timing

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
    assert PhaseClock.parse(f"stage output\n{line}\n") == fig  # what benchmarks/speed.py reads
    assert PhaseClock.parse("time: cuda init 0.14s, swap passes 0.74s; total 1.00s") == {
        "cuda init": 0.14, "swap passes": 0.74, "total": 1.0}
    assert PhaseClock.parse("no time line here") == {}
    with pytest.raises(ZeroDivisionError):  # a block that fails is timed too
        with clock("save"):
            time.sleep(0.01)
            1 / 0
    assert clock.seconds["save"] >= 0.01


def test_process_age_counts_from_process_start():
    age = process_age()
    if age is None:
        pytest.skip("no /proc")
    t = time.monotonic()
    assert 0.0 < age < t + 1.0  # this process started after boot, and a while ago (imports ran)


def test_memory_line_reports_the_peak_rss():
    line = memory_line(CPU)
    m = re.fullmatch(r"peak memory: RSS ([\d.]+) GiB", line)
    assert m and 0.01 < float(m[1]) < 128  # this process holds torch: tens of MiB at least
