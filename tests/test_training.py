"""The training loop of stages 1 and 3 (avvp/engine.py) in-process, on random LLP-shaped videos:
the optimizer torch builds for each --fused_adam choice, resuming a checkpoint of another
optimizer implementation, what fit() writes and prints, frame pooling in training, and the
phase clock behind each stage's `time:` line."""
import copy
import re
import time

import numpy as np
import pytest
import torch

from avvp import config, engine
from avvp.data import Split
from avvp.model import MMIL_Net, loss_options
from avvp.timing import PhaseClock
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


def losses(args):
    return loss_options(args.contrastive_weight, args.temperature, args.contrastive_smoothing)


def make_trainer(args, split, init=None, dropout=0.1):
    torch.manual_seed(0)
    net = MMIL_Net(dropout=dropout, frame_pool=args.frame_pool)
    if init is not None:
        net.load_state_dict(init)
    return engine.Trainer(net, split, targets(split.labels), CPU, losses(args), config.training_settings(args))


@pytest.fixture
def lr_step_1(monkeypatch):
    """StepLR(1, 0.5): the lr changes every epoch, so that the saved schedule matters."""
    monkeypatch.setattr(engine, "LR_STEP", 1)
    monkeypatch.setattr(engine, "LR_GAMMA", 0.5)


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
        opts = [engine.build_optimizer(model, args.lr, args.fused_adam, capturable=c)[0] for c in (False, True)]
        assert [o.defaults["fused"] for o in opts] == [eager, captured], choice
        assert [o.defaults["capturable"] for o in opts] == [False, True]
        assert torch.is_tensor(opts[1].param_groups[0]["lr"]) and float(opts[1].param_groups[0]["lr"]) == pytest.approx(3e-4)


def test_fused_adam_on_the_cpu_follows_the_same_loss_trajectory(lr_step_1):
    split = random_split(32, seed=1, label_rate=0.15)
    runs = {}
    for choice in ("off", "on"):
        t = make_trainer(recipe_args("--fused_adam", choice, "--batch-size", "8"), split, dropout=0.0)
        assert t.opt.defaults["fused"] is (True if choice == "on" else None)
        runs[choice] = [t.train_one_epoch(e) for e in range(1, 4)]
    assert runs["off"][-1] < runs["off"][0]  # it trains
    assert runs["off"] == pytest.approx(runs["on"], rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("flags", [{"capturable": True, "fused": True}, {"capturable": True}, {"foreach": True}],
                         ids=["graph path, fused", "graph path, foreach", "eager CUDA"])
def test_load_state_keeps_this_optimizer_implementation_and_continues_identically(flags, lr_step_1):
    """A checkpoint of a GPU run records its Adam's flags (capturable, maybe fused); loaded by a CPU
    trainer, the optimizer keeps its own flags, takes the saved moments, lr and schedule, and goes
    on exactly as the trainer that saved it."""
    args = recipe_args("--batch-size", "8")
    split = random_split(24, seed=2)
    first = make_trainer(args, split)
    first.train_one_epoch(1)
    state = copy.deepcopy(first.state())
    for g in state["optimizer"]["param_groups"]:
        g.update(flags)
    want = first.train_one_epoch(2)  # the uninterrupted run (every RNG as saved: set_rng_state below restores them)
    resumed = make_trainer(args, split)
    assert not params_equal(resumed.model, first.model)
    resumed.load_state(state)
    assert {k: resumed.opt.param_groups[0][k] for k in ("capturable", "fused", "foreach")} == {
        "capturable": False, "fused": None, "foreach": None}
    assert resumed.lr() == pytest.approx(1.5e-4)  # one StepLR step of 0.5: the saved schedule
    assert float(resumed.opt.state[next(resumed.model.parameters())]["step"]) == 3.0  # 24 / 8 steps
    got = resumed.train_one_epoch(2)
    assert got == want and params_equal(resumed.model, first.model)
    assert resumed.lr() == first.lr() == pytest.approx(7.5e-5)


def test_resume_restores_the_batch_order_and_every_rng():
    args = recipe_args("--batch-size", "8")
    split = random_split(24, seed=3)
    t = make_trainer(args, split)
    t.train_one_epoch(1)
    state = copy.deepcopy(t.state())
    draws = (torch.randperm(24, generator=t.gen).tolist(), torch.rand(3).tolist(), np.random.rand(2).tolist())
    torch.manual_seed(123)
    np.random.seed(123)
    engine.set_rng_state(state["rng"], t.gen)
    again = (torch.randperm(24, generator=t.gen).tolist(), torch.rand(3).tolist(), np.random.rand(2).tolist())
    assert again == draws and draws[0] != list(range(24))


# ----------------------------------------------------------------------------- fit

def fit_setup(tmp_path, epochs, n=8):
    args = recipe_args("--batch-size", "4", "--epochs", str(epochs), "--model_save_dir", str(tmp_path))
    split = random_split(n, seed=0)
    split.gt_a = split.gt_v = np.zeros((n, 25, 10), np.uint8)  # fit() evaluates val and test
    split.gt_a[:, 0, 2:5] = 1
    torch.manual_seed(0)
    return args, split, MMIL_Net()


def fit(args, split, net, **kw):
    return engine.fit(net, split, targets(split.labels), split, split, losses(args), config.training_settings(args),
                      "stage1", CPU, **kw)


def test_fit_writes_each_epoch_once_and_the_last_with_its_test_metrics(tmp_path, monkeypatch):
    args, split, net = fit_setup(tmp_path, epochs=3)
    calls, real = [], engine.save_checkpoint

    def spy(path, state, run_args, epoch, metrics, stage, extra=None):
        calls.append((epoch, sorted(metrics), (tmp_path / "MMIL_Net.pt").exists()))
        return real(path, state, run_args, epoch, metrics, stage, extra)

    monkeypatch.setattr(engine, "save_checkpoint", spy)
    test = fit(args, split, net, extra={"note": 5})
    assert calls == [(1, ["val"], False), (2, ["val"], True), (3, ["test", "val"], True)]
    ckpt = torch.load(tmp_path / "MMIL_Net.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and sorted(ckpt["metrics"]) == ["test", "val"] and ckpt["note"] == 5
    assert ckpt["stage"] == "stage1" and ckpt["args"]["epochs"] == 3 and ckpt["metrics"]["test"] == test
    assert ckpt["arch"] == {"num_classes": 25, "d_model": 512, "frame_pool": "early"}
    assert float(ckpt["optimizer"]["state"][0]["step"]) == 6.0  # 3 epochs of 2 batches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MMIL_Net.pt", "test_metrics.json", "val_metrics.json"]


def test_refreshed_targets_reach_the_loss_before_each_epoch(tmp_path, monkeypatch):
    """refresh_targets (stage 3's --denoise joint) is asked before every epoch with the model being
    trained, and the batches of that epoch train toward what it returned."""
    args, split, net = fit_setup(tmp_path, epochs=2)
    seen, asked = [], []
    real = engine.mmil_loss

    def spy(out, t_video, t_audio, t_visual, **kw):
        seen.append(float(t_audio.sum()))
        return real(out, t_video, t_audio, t_visual, **kw)

    def refresh(model, epoch):
        asked.append((model is net, epoch))
        y = split.labels * (epoch - 1)   # epoch 1: no audio target at all; epoch 2: the weak labels
        return split.labels, y, targets(split.labels)[2]

    monkeypatch.setattr(engine, "mmil_loss", spy)
    fit(args, split, net, refresh_targets=refresh)
    assert asked == [(True, 1), (True, 2)]
    assert seen[:2] == [0.0, 0.0] and sum(seen[2:]) == float(split.labels.sum())  # 2 batches of 4 per epoch


def test_the_epoch_that_captures_the_graph_says_what_capturing_cost(tmp_path, capsys, monkeypatch):
    """On CUDA the first full batch captures the step (warm-up steps, then recording); that epoch's
    line says how long each took. Simulated here: capturing needs CUDA."""
    args, split, net = fit_setup(tmp_path, epochs=2)
    real = engine.Trainer.train_one_epoch

    def capturing(trainer, epoch):  # trains eagerly, and leaves the trainer as a capturing epoch would
        graph, trainer.graph = trainer.graph, None
        loss = real(trainer, epoch)
        if graph is None:
            graph, trainer.capture_seconds = object(), (0.5, 0.25)
        trainer.graph = graph
        return loss

    monkeypatch.setattr(engine.Trainer, "train_one_epoch", capturing)
    fit(args, split, net)
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
        runs[pool] = ([t.train_one_epoch(e) for e in (1, 2)], t.model)
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
    real = engine.mmil_loss
    n = {"calls": 0}

    def exploding(*a, **k):
        loss, nce = real(*a, **k)
        n["calls"] += 1
        return (loss * float("nan") if n["calls"] == 2 else loss), nce

    monkeypatch.setattr(engine, "mmil_loss", exploding)
    with pytest.raises(AVVPError, match=r"non-finite loss \(nan\) at epoch 4, batch 2 of 3; training stopped"):
        t.train_one_epoch(4)
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


AGE_AFTER_SLEEP = "import time; time.sleep(0.6); from avvp.timing import process_age; print(process_age())"


def test_process_age_counts_from_process_start():
    """A process that sleeps 0.6 s before asking is at least that old: start-up is counted."""
    import subprocess
    import sys
    from conftest import stage_env
    out = subprocess.run([sys.executable, "-c", AGE_AFTER_SLEEP], capture_output=True, text=True, env=stage_env(),
                         timeout=120).stdout.strip()
    if out == "None":
        pytest.skip("no /proc")
    assert 0.6 <= float(out) < 60


def test_memory_line_reports_the_peak_rss():
    """While this process holds 512 MiB more than it resides in now, the reported peak covers both."""
    import os
    from avvp.timing import memory_line
    with open("/proc/self/statm") as f:
        resident_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30     # GiB
    held = np.ones(2**29 // 8)                                                          # 512 MiB, touched
    m = re.fullmatch(r"peak memory: RSS ([\d.]+) GiB", memory_line(CPU))
    assert m and float(m[1]) >= resident_now + 0.5 - 0.01 and held[-1] == 1.0
