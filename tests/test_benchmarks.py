"""The benchmark scripts run end to end at a tiny size (their figures only mean something at LLP
scale on a GPU, but a GPU session must not be the first to find them broken), and what they
check holds on the CPU: the stages' Adam is torch's bit for bit, no training stage imports
torch._dynamo, every stage reports its phases."""
import re
import subprocess
import sys

from conftest import ROOT, stage_env


def bench(script, *args, timeout=300):
    r = subprocess.run([sys.executable, f"benchmarks/{script}", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=stage_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_graph_check_finds_the_stage_optimizer_bit_identical_to_torch_adam():
    out = bench("graph_check.py", "--videos", 48, "--epochs", 1, "--adam_videos", 32)
    rows = re.findall(r"avvp.optim.Adam vs torch.optim.Adam, (\w+) path, 1 epoch\(s\): max \|weight diff\| = (\S+) "
                      r"\(torch vs torch: (\S+)\)", out)
    assert [r[0] for r in rows] == ["eager", "graph"], out
    assert all(float(d) == 0.0 and float(f) == 0.0 for _, d, f in rows), rows


def test_stage_profile_runs_stage_1_without_importing_dynamo(tiny_llp, tmp_path):
    out = bench("stage_profile.py", "--top", 5, "--", "--mode", "train", *tiny_llp.args(), "--epochs", 1,
                "--model_save_dir", tmp_path)
    assert "time: start-up " in out and "Ordered by: cumulative time" in out, out[-2000:]
    assert "torch._dynamo imported: False" in out and "pandas imported: False" in out


def test_step_profile_times_each_variant():
    out = bench("step_profile.py", "--videos", 48, "--epochs", 1, "--profile_steps", 2,
                "--variants", "default,foreach_adam,sdpa_attention")
    times = {v: float(t) for v, t in re.findall(r"^(default|foreach_adam|sdpa_attention) +[\d.]+ +([\d.]+) ", out, re.M)}
    assert times.keys() == {"default", "foreach_adam", "sdpa_attention"} and all(t > 0 for t in times.values()), out
    assert re.search(r"eager step, profiled over 2 steps: \d+ leaf operators per step", out), out


def test_speed_runs_the_three_stages_and_says_where_the_time_went(tmp_path):
    out = bench("speed.py", "--train", 40, "--val", 10, "--test", 10, "--epochs", 1, "--skip_baseline",
                "--skip_cold", "--workdir", tmp_path / "w")
    row = re.search(r"^packed cache +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) ", out, re.M)
    assert row, out[-2000:]
    s1, s2, s3, total = map(float, row.groups())
    assert abs(s1 + s2 + s3 - total) < 0.15
    for st in ("stage1", "stage2", "stage3"):
        assert re.search(rf"packed cache +{st}: wall [\d.]+ \| start-up [\d.]+", out), st
    assert "target:" not in out  # the verdict is only printed at LLP scale with the recipe's epochs


def test_precompile_finds_modules_without_bytecode_and_writes_it(tmp_path):
    """With an empty bytecode folder (PYTHONPYCACHEPREFIX) every module a stage imports lacks
    bytecode; after one run of precompile.py none does."""
    env = stage_env({"PYTHONPYCACHEPREFIX": str(tmp_path / "pyc"), "PYTHONDONTWRITEBYTECODE": "1"})

    def run(*args):
        r = subprocess.run([sys.executable, "benchmarks/precompile.py", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    n = re.search(r"bytecode: (\d+) of the (\d+) modules", run("--check"))
    assert n and int(n[1]) == int(n[2]) > 300 and "torch " in run("--check")
    out = run()
    assert f"wrote {n[1]} .pyc files" in out and f"(prefix {tmp_path / 'pyc'})" in out
    assert f"bytecode: 0 of the {n[2]} modules" in run("--check")
