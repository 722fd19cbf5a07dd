"""Adam for the training stages, without torch.optim's import of torch._dynamo (a pure speed-up).

Every public method of torch.optim.Optimizer (construction, zero_grad, step, state_dict) is
wrapped to keep torch.compile out of it, and the wrapper imports torch._dynamo on its first call:
about as long as importing torch itself (2-core CPU: 1.1-1.4 s per training stage, measured
beside 1.1-1.3 s for torch). This project never compiles, so the stages use this class instead.

It is not a re-implementation: step() gathers the same lists as torch.optim.Adam.step and calls
the same per-tensor, foreach or fused update function of torch.optim.adam, picked by the same
rule (fused if asked; else foreach when every parameter is on a device with foreach kernels, i.e.
CUDA; else per tensor), so parameters, moments and step counts come out bit-identical (tested
against torch.optim.Adam on the CPU, and on CUDA in benchmarks/graph_check.py). state_dict() has
torch.optim.Adam's layout, so checkpoints load into either; loading one keeps this optimizer's own
implementation flags (foreach, fused, capturable), unlike torch (see load_state_dict). It
subclasses torch.optim.Optimizer without running its __init__ only so that torch's StepLR
accepts it; every Optimizer method the project calls is overridden here.

If this torch build lacks those functions or they take other arguments, `make_adam` falls back to
torch.optim.Adam (same results, plus the import).
"""
import inspect
from collections import defaultdict
from copy import deepcopy
from itertools import chain

import torch
from torch.optim import adam as _torch_adam

try:
    from torch.optim.optimizer import _default_to_fused_or_foreach
except ImportError:  # another torch layout: make_adam falls back to torch.optim.Adam
    _default_to_fused_or_foreach = None

_UPDATE_ARGS = ["params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps", "grad_scale",
                "found_inf"]
_IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")  # how, not what: see load_state_dict
_UPDATE_KWARGS = {"amsgrad", "has_complex", "beta1", "beta2", "lr", "weight_decay", "eps", "maximize",
                  "capturable", "differentiable", "decoupled_weight_decay"}


def _update_functions():
    """torch's (per-tensor, foreach, fused) Adam updates, or None when they take other arguments."""
    if _default_to_fused_or_foreach is None:
        return None
    names = ("_single_tensor_adam", "_multi_tensor_adam", "_fused_adam")
    fns = [getattr(_torch_adam, n, None) for n in names]
    for fn in fns:
        if fn is None:
            return None
        params = inspect.signature(fn).parameters.items()
        positional = [n for n, p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if positional != _UPDATE_ARGS or {n for n, p in params if p.kind is p.KEYWORD_ONLY} != _UPDATE_KWARGS:
            return None
    return dict(zip(("single", "foreach", "fused"), fns))


_UPDATES = _update_functions()


class Adam(torch.optim.Optimizer):
    """torch.optim.Adam (no weight decay, no amsgrad) for one parameter group; see the module doc."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, foreach=None, capturable=False,
                 fused=None):
        # no super().__init__: that is where torch.optim imports torch._dynamo
        if _UPDATES is None:
            raise RuntimeError("this torch build's Adam update functions are not the expected ones")
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0, "amsgrad": False,
                         "maximize": False, "foreach": foreach, "capturable": capturable,
                         "differentiable": False, "fused": fused, "decoupled_weight_decay": False}
        self.state = defaultdict(dict)
        self.param_groups = [{"params": list(params), **self.defaults}]

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            on_device = group["capturable"] or group["fused"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:  # as torch.optim.Adam._init_group: a 0-dim float32 step, zero moments
                    st["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if on_device
                                  else torch.tensor(0.0, dtype=torch.float32))
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(st["exp_avg"])
                exp_avg_sqs.append(st["exp_avg_sq"])
                steps.append(st["step"])
            fused, foreach = group["fused"], group["foreach"]
            if fused is None and foreach is None:  # torch.optim.adam.adam's default
                _, foreach = _default_to_fused_or_foreach(params, False, use_fused=False)
                if foreach and torch.is_tensor(group["lr"]) and not group["capturable"]:
                    foreach = False
            update = _UPDATES["fused" if fused else "foreach" if foreach else "single"]
            beta1, beta2 = group["betas"]
            update(params, grads, exp_avgs, exp_avg_sqs, [], steps, None, None, amsgrad=False,
                   has_complex=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0,
                   eps=group["eps"], maximize=False, capturable=group["capturable"], differentiable=False,
                   decoupled_weight_decay=False)

    def state_dict(self):
        """torch.optim.Optimizer.state_dict's layout: parameters numbered in group order."""
        index = {id(p): i for i, p in enumerate(chain.from_iterable(g["params"] for g in self.param_groups))}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": {index[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """As torch.optim.Optimizer.load_state_dict (moments to each parameter's device and dtype,
        hyperparameters such as the decayed lr from the checkpoint), with one difference: the
        implementation flags (foreach, fused, capturable, differentiable) stay this optimizer's.
        They say how the saving process ran the update, not where training stands: torch would
        take them from the checkpoint, so that a GPU run's checkpoint (capturable, maybe fused)
        resumed on the CPU would ask for a device-only update, or run another kernel than asked.
        The step count goes to the device only where this optimizer's update reads it there."""
        saved = deepcopy(state_dict["param_groups"])
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        for s, g in zip(saved, self.param_groups):
            s.update({k: g[k] for k in _IMPLEMENTATION_FLAGS})
        by_index = dict(zip(chain.from_iterable(s["params"] for s in saved),
                            chain.from_iterable(g["params"] for g in self.param_groups)))
        state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = by_index[i]
            group = next(g for g in saved if i in g["params"])
            on_device = group["capturable"] or group["fused"]
            state[p] = {k: (v.to(dtype=torch.float32, device=p.device) if on_device else v) if k == "step"
                        else v.to(dtype=p.dtype, device=p.device) for k, v in s.items()}
        for s, g in zip(saved, self.param_groups):
            s["params"] = g["params"]
        self.state, self.param_groups = state, saved


def make_adam(params, lr, *, capturable=False, fused=None):
    """This module's Adam, or torch.optim.Adam where this torch build's update functions differ."""
    if _UPDATES is None:
        print("note: torch.optim.adam's update functions differ in this torch build: using torch.optim.Adam")
        return torch.optim.Adam(params, lr=lr, capturable=capturable, fused=fused)
    return Adam(params, lr=lr, capturable=capturable, fused=fused)
