"""avvp.optim.Adam is torch.optim.Adam's update without torch.optim's import of torch._dynamo:
same numbers bit for bit, same state_dict layout, and no torch._dynamo in a training run."""
import copy

import pytest
import torch

from avvp import optim
from avvp.model import MMIL_Net, mmil_loss



def batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        y = (torch.rand(4, 25, generator=g) < 0.2).float()
        yield (torch.randn(4, 10, 128, generator=g), torch.rand(4, 10, 2048, generator=g),
               torch.randn(4, 10, 512, generator=g), y)


def train(make_opt, steps=6, resume_from=None):
    """A few steps of MMIL_Net (dropout on, so the RNG is exercised too) with StepLR(2, 0.1)."""
    torch.manual_seed(0)
    net = MMIL_Net()
    opt = make_opt(net.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    if resume_from is not None:  # a copy: both classes, like torch, alias the loaded tensors
        opt.load_state_dict(copy.deepcopy(resume_from))
    for i, (a, v, s, y) in enumerate(batches(steps)):
        loss, _ = mmil_loss(net(a, v, s), y, y, 0.9 * y + 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 2:
            sched.step()
    return net, opt


@pytest.mark.parametrize("kw", [{}, {"foreach": True}, {"fused": True}],
                            ids=["per-tensor (CPU default)", "foreach (CUDA default)", "fused"])
def test_adam_is_torch_adam_bit_for_bit(kw):
    ref_net, ref_opt = train(lambda p: torch.optim.Adam(p, lr=3e-4, **kw))
    net, opt = train(lambda p: optim.Adam(p, lr=3e-4, **kw))
    for (name, a), b in zip(ref_net.named_parameters(), net.parameters()):
        assert torch.equal(a, b), name
    ref_sd, sd = ref_opt.state_dict(), opt.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]  # lr decayed by the shared StepLR, flags, indices
    assert sd["param_groups"][0]["lr"] == pytest.approx(3e-5)  # 3 scheduler steps of size 2: one decay
    assert sd["state"].keys() == ref_sd["state"].keys() and len(sd["state"]) == len(list(net.parameters()))
    for i, st in ref_sd["state"].items():
        assert st.keys() == sd["state"][i].keys()
        for k, v in st.items():
            assert torch.equal(v, sd["state"][i][k]) and v.device == sd["state"][i][k].device, (i, k)
    assert float(sd["state"][0]["step"]) == 6.0


def test_state_dicts_load_across_the_two_and_resume_the_same_trajectory():
    torch_adam, our_adam = (lambda p: torch.optim.Adam(p, lr=3e-4)), (lambda p: optim.Adam(p, lr=3e-4))
    from_torch = train(torch_adam, steps=3)[1].state_dict()
    from_ours = train(our_adam, steps=3)[1].state_dict()
    ref, _ = train(torch_adam, resume_from=from_torch)
    for make, saved in ((our_adam, from_torch), (torch_adam, from_ours), (our_adam, from_ours)):
        net, _ = train(make, resume_from=saved)
        assert all(torch.equal(x, y) for x, y in zip(ref.parameters(), net.parameters()))
    fresh, _ = train(torch_adam)
    assert not all(torch.equal(x, y) for x, y in zip(ref.parameters(), fresh.parameters()))  # the state mattered
    with pytest.raises(ValueError, match="different number"):
        optim.Adam(list(MMIL_Net().parameters())[:3]).load_state_dict(from_ours)


@pytest.mark.parametrize("flags", [{"capturable": True}, {"capturable": True, "fused": True}, {"foreach": True}],
                         ids=["graph path, foreach", "graph path, fused", "eager CUDA"])
def test_a_checkpoint_resumes_with_this_process_update_not_the_saving_one(flags):
    """A checkpoint records how its process ran the update (a GPU run: capturable, maybe fused). Resumed
    elsewhere (here: the CPU), the loading optimizer keeps its own way: the saved flags would ask for
    a device-only capturable update, or silently switch to another kernel."""
    our_adam = lambda p: optim.Adam(p, lr=3e-4)  # noqa: E731
    saved = train(our_adam, steps=3)[1].state_dict()
    ref, _ = train(our_adam, resume_from=saved)
    elsewhere = copy.deepcopy(saved)
    elsewhere["param_groups"][0].update(flags)
    net, opt = train(our_adam, resume_from=elsewhere)
    assert all(torch.equal(x, y) for x, y in zip(ref.parameters(), net.parameters()))
    assert {k: opt.param_groups[0][k] for k in flags} == {k: saved["param_groups"][0][k] for k in flags}
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-5)  # hyperparameters do come from the checkpoint


def test_make_adam_falls_back_to_torch_where_the_update_functions_differ(monkeypatch, capsys):
    params = list(MMIL_Net().parameters())
    assert type(optim.make_adam(params, 3e-4)) is optim.Adam
    assert optim._update_functions() is not None  # this torch build's functions take the expected arguments

    def renamed(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, grad_scale, found_inf, *,
                amsgrad, has_complex, beta1, beta2, learning_rate, weight_decay, eps, maximize, capturable,
                differentiable, decoupled_weight_decay):  # a future torch renaming one argument
        raise AssertionError("never called")
    def swapped(grads, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, grad_scale, found_inf, *,
                amsgrad, has_complex, beta1, beta2, lr, weight_decay, eps, maximize, capturable,
                differentiable, decoupled_weight_decay):  # or reordering two positional ones
        raise AssertionError("never called")
    for changed in (renamed, swapped):
        monkeypatch.setattr(optim._torch_adam, "_multi_tensor_adam", changed)
        assert optim._update_functions() is None
    monkeypatch.undo()
    monkeypatch.setattr(optim, "_UPDATES", None)
    assert type(optim.make_adam(params, 3e-4)) is torch.optim.Adam
    assert "using torch.optim.Adam" in capsys.readouterr().out
