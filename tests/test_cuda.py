"""Checks that need a GPU (skipped without CUDA; `bash benchmarks/gpu_run.sh` runs them on one):
the training step replayed from a CUDA graph computes what the eager step computes, fused Adam
what foreach Adam computes, and a GPU checkpoint resumes on the CPU."""
import copy

import numpy as np
import pytest
import torch

from avvp import config, stage
from avvp.data import Split
from avvp.engine import Trainer
from avvp.model import MMIL_Net

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LOSS = {"contrastive_weight": 1.0, "temperature": 0.2, "smoothing": 0.1}


def settings(**override):
    a = stage.stage_parser(None, "train").parse_args(["--no_progress"])
    vars(a).update(override)
    return config.training_settings(a)


def random_split(device, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {"audio": torch.randn(n, 10, 128, generator=g), "video": torch.rand(n, 10, 2048, generator=g),
             "st": torch.randn(n, 10, 512, generator=g)}
    labels = (torch.rand(n, 25, generator=g) < 0.1).float().numpy()
    labels[np.arange(n), np.arange(n) % 25] = 1.0
    return Split([f"v{i:010d}_0_10" for i in range(n)], labels, {k: v.to(device) for k, v in feats.items()}, device)


def train_epochs(graph, fused_adam, epochs=2):
    """Loss per epoch and final weights; dropout off, so both paths see the same function."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = MMIL_Net(dropout=0.0).to(device)
    split = random_split(device)
    y = split.labels
    t = Trainer(net, split, (y, y, 0.9 * y + 0.05), device, LOSS, settings(graph=graph, fused_adam=fused_adam))
    losses = [t.train_one_epoch(e) for e in range(1, epochs + 1)]
    return np.array(losses), {k: v.detach().cpu() for k, v in net.state_dict().items()}, t


def max_weight_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_graph_step_matches_eager_step():
    eager, w_eager, t_eager = train_epochs("off", "off")
    graph, w_graph, t_graph = train_epochs("on", "off")
    assert t_eager.graph is None and t_graph.graph is not None
    np.testing.assert_allclose(graph, eager, rtol=1e-4)
    assert max_weight_diff(w_graph, w_eager) < 5e-2


def test_fused_adam_matches_foreach_on_the_graph_path():
    foreach, w_foreach, _ = train_epochs("on", "off")
    fused, w_fused, t = train_epochs("on", "on")
    assert t.opt.defaults["fused"] is True
    np.testing.assert_allclose(fused, foreach, rtol=1e-4)
    assert max_weight_diff(w_fused, w_foreach) < 5e-2


def test_gpu_checkpoint_resumes_on_the_cpu():
    _, _, gpu = train_epochs("on", "auto", epochs=1)
    assert gpu.opt.param_groups[0]["capturable"] and gpu.opt.param_groups[0]["fused"]
    state = copy.deepcopy({k: v for k, v in gpu.state().items()})
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    net = MMIL_Net(dropout=0.0)
    split = random_split(cpu)
    y = split.labels
    t = Trainer(net, split, (y, y, 0.9 * y + 0.05), cpu, LOSS, settings())
    t.load_state({**state, "model": {k: v.cpu() for k, v in state["model"].items()}})
    group = t.opt.param_groups[0]
    assert not group["capturable"] and not group["fused"]  # the CPU optimizer's own flags
    assert all(s["exp_avg"].device.type == "cpu" for s in t.opt.state.values())
    loss = t.train_one_epoch(2)
    assert np.isfinite(loss)
