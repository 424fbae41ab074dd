"""tinynorm.optim against torch.optim: updates, state_dict, schedules, gradient clipping.

Optimizers run 20 steps in float64 on the same random gradients (fresh each step, never
all ones) and must agree within 1e-10 relative (atol 1e-12 · max|expected|). Schedules
must give PyTorch's lr at every step within 1e-12 relative: both sides compute the same
closed forms (PyTorch's recursive LinearLR/CosineAnnealingLR drift from them only by
rounding).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm import optim
from tinynorm.optim import lr_scheduler
from tinynorm.testing import assert_close
from tinynorm.testing.compare import to_host as host
from torch_pairs import close

SHAPES = [(3, 4), (5,), ()]


def make_pair(rng, shapes=SHAPES):
    values = [rng.standard_normal(s) for s in shapes]
    ours = [tn.nn.Parameter(tn.tensor(v)) for v in values]
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    return ours, theirs


def step_both(rng, opt, ref, ours, theirs, steps):
    """``steps`` steps of both optimizers, each after the same random gradients."""
    for _ in range(steps):
        set_grads(rng, ours, theirs)
        opt.step()
        ref.step()


def assert_same_parameters(ours, theirs):
    for p, t in zip(ours, theirs):
        close(p, t.detach().numpy(), scale_atol=True)


def set_grads(rng, ours, theirs, skip=()):
    """Same random gradients on both sides; parameters in ``skip`` get none (None)."""
    for i, (p, t) in enumerate(zip(ours, theirs)):
        if i in skip:
            p.grad, t.grad = None, None
            continue
        g = rng.standard_normal(t.shape)
        p.grad = tn.tensor(g).data
        t.grad = torch.tensor(g)


OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.9, 0.98), weight_decay=0.05, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.3, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.7, 0.9))),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, maximize=True)),
]


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}"
                              for n, kw in OPTIMIZER_CASES])
def test_optimizer_matches_torch_for_20_steps(name, kwargs):
    rng = np.random.default_rng(0)
    ours, theirs = make_pair(rng)
    opt = getattr(optim, name)(ours, **kwargs)
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    for step in range(20):
        # one parameter sits out two steps: both must skip it (and Adam's step count with it)
        set_grads(rng, ours, theirs, skip=(1,) if step in (4, 5) else ())
        opt.step()
        ref.step()
    assert_same_parameters(ours, theirs)
    for i, (p, t) in enumerate(zip(ours, theirs)):
        for key, value in ref.state[t].items():
            if key == "step":
                assert opt.state[p]["step"] == int(value) == (18 if i == 1 else 20)
            else:
                close(opt.state[p][key], value.numpy(), scale_atol=True)


def test_param_groups_with_their_own_options_match_torch():
    rng = np.random.default_rng(1)
    ours, theirs = make_pair(rng)
    opt = optim.Adam([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.1, "weight_decay": 0.2}],
                     lr=0.01)
    ref = torch.optim.Adam([{"params": theirs[:2]},
                            {"params": theirs[2:], "lr": 0.1, "weight_decay": 0.2}], lr=0.01)
    assert opt.param_groups[1]["betas"] == ref.param_groups[1]["betas"] == (0.9, 0.999)
    step_both(rng, opt, ref, ours, theirs, 20)
    assert_same_parameters(ours, theirs)


def test_updates_are_in_place_and_leave_the_gradient_alone():
    p = tn.nn.Parameter(tn.tensor(np.arange(4.0)))
    data = p.data
    grad = np.array([1.0, -2.0, 0.5, 3.0])
    p.grad = tn.tensor(grad).data
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True).step()
    assert p.data is data  # modules and optimizers keep referring to the same array
    assert np.array_equal(host(p.grad), grad)


def test_zero_grad_sets_to_none_or_zeroes_in_place():
    p = tn.nn.Parameter(tn.randn(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = tn.randn(3).data
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and not host(grad).any()
    opt.zero_grad()
    assert p.grad is None


def test_state_dict_has_torch_structure_and_round_trips():
    rng = np.random.default_rng(2)
    ours, theirs = make_pair(rng)
    opt = optim.Adam([{"params": ours[:1]}, {"params": ours[1:], "lr": 0.1}], lr=0.01, amsgrad=True)
    ref = torch.optim.Adam([{"params": theirs[:1]}, {"params": theirs[1:], "lr": 0.1}], lr=0.01,
                           amsgrad=True)
    step_both(rng, opt, ref, ours, theirs, 3)
    mine, expected = opt.state_dict(), ref.state_dict()
    assert sorted(mine) == sorted(expected)
    assert [g["params"] for g in mine["param_groups"]] == [[0], [1, 2]]
    for g, e in zip(mine["param_groups"], expected["param_groups"]):
        # options that choose PyTorch's implementation, not the values it computes
        assert set(e) - set(g) == {"foreach", "capturable", "differentiable", "fused"}
        assert all(g[k] == e[k] for k in g)
    assert mine["state"].keys() == expected["state"].keys()
    assert all(mine["state"][i].keys() == expected["state"][i].keys() for i in mine["state"])

    # a second optimizer on copies of the parameters continues identically, bit for bit
    copies = [tn.nn.Parameter(tn.tensor(host(p).copy())) for p in ours]
    twin = optim.Adam([{"params": copies[:1]}, {"params": copies[1:]}], lr=0.5)
    twin.load_state_dict(copy.deepcopy(mine))
    assert twin.param_groups[1]["lr"] == 0.1 and twin.param_groups[0]["params"] == copies[:1]
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in ours]
        for group in (ours, copies):
            for p, g in zip(group, grads):
                p.grad = tn.tensor(g).data
        opt.step()
        twin.step()
    for a, b in zip(ours, copies):
        assert np.array_equal(host(a), host(b))
    # the loaded state is a copy, not shared with the source
    assert twin.state[copies[0]]["exp_avg"] is not opt.state[ours[0]]["exp_avg"]


def test_torch_state_dict_loads_and_continues_like_torch():
    rng = np.random.default_rng(3)
    ours, theirs = make_pair(rng)
    ref = torch.optim.AdamW(theirs, lr=0.02)
    for _ in range(4):
        set_grads(rng, ours, theirs)
        ref.step()
    for p, t in zip(ours, theirs):
        p.data[...] = tn.tensor(t.detach().numpy()).data
    opt = optim.AdamW(ours)
    opt.load_state_dict(ref.state_dict())
    step_both(rng, opt, ref, ours, theirs, 6)
    assert_same_parameters(ours, theirs)


@pytest.mark.parametrize("name, kwargs", [
    ("Adam", dict(maximize=True, amsgrad=True)),  # loaded into a plain Adam: ascends
    ("AdamW", dict(weight_decay=0.2)),  # loaded into an Adam: decays as AdamW, as torch's does
    ("SGD", dict(momentum=0.9, maximize=True)),
])
def test_torch_options_that_change_the_update_load_with_its_state(name, kwargs):
    """The options in a torch state_dict's groups are honoured, not dropped: a torch Adam
    loaded with an AdamW's state decays its weights as AdamW, and so does tinynorm's."""
    rng = np.random.default_rng(5)
    ours, theirs = make_pair(rng)
    ref = getattr(torch.optim, name)(theirs, lr=0.02, **kwargs)
    step_both(rng, getattr(optim, name)(ours, lr=0.02, **kwargs), ref, ours, theirs, 3)
    plain = "SGD" if name == "SGD" else "Adam"
    opt = getattr(optim, plain)(ours)
    opt.load_state_dict(ref.state_dict())
    twin = getattr(torch.optim, plain)(theirs)
    twin.load_state_dict(ref.state_dict())
    step_both(rng, opt, twin, ours, theirs, 5)
    assert_same_parameters(ours, theirs)


def test_torch_state_arrays_that_need_grad_or_are_bfloat16_load():
    """State entries are read as torch's copy_ reads them: detached, bfloat16 widened."""
    w = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float32))
    ref = torch.optim.Adam([w])
    w.grad = torch.randn(3, 2)
    ref.step()
    saved = ref.state_dict()
    entries = saved["state"][0]
    entries["exp_avg"] = entries["exp_avg"].bfloat16()
    entries["exp_avg_sq"] = entries["exp_avg_sq"].clone().requires_grad_()
    opt = optim.Adam([tn.nn.Parameter(tn.zeros(3, 2))])
    opt.load_state_dict(saved)
    (state,) = opt.state.values()
    assert state["exp_avg"].dtype == np.float32
    assert np.array_equal(host(state["exp_avg"]), entries["exp_avg"].float().numpy())
    assert np.array_equal(host(state["exp_avg_sq"]), entries["exp_avg_sq"].detach().numpy())


class Unreadable:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("no data here")


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd["state"][0].update(exp_avg=Unreadable()),
     "'exp_avg' for parameter 0 that cannot be read as an array (test_optim.Unreadable)"),
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
     "different number of parameter groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), "doesn't match the size"),
    (lambda sd: sd["state"][0].update(exp_avg=np.zeros((4, 3))), "'exp_avg' of shape (4, 3)"),
    (lambda sd: sd["state"].update({7: {}}), "state for parameter 7"),
    (lambda sd: sd.pop("state"), "keys 'state' and 'param_groups'"),
])
def test_load_state_dict_rejects_a_mismatch_and_changes_nothing(damage, words):
    rng = np.random.default_rng(4)
    ours, theirs = make_pair(rng)
    opt = optim.Adam(ours, lr=0.01)
    set_grads(rng, ours, theirs)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["lr"] = 123.0
    damage(bad)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(bad)
    assert words in str(info.value)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, entries in before["state"].items():
        for key, value in entries.items():
            assert np.array_equal(host(after["state"][i][key]), host(value))


@pytest.mark.parametrize("make, words", [
    (lambda ps: optim.SGD(ps, lr=-0.1), "Invalid learning rate"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum requires"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
    (lambda ps: optim.AdamW(ps, eps=-1.0), "Invalid epsilon value"),
    (lambda ps: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda ps: optim.SGD([{"params": ps}, {"params": ps[:1]}], lr=0.1),
     "more than one parameter group"),
])
def test_bad_options_raise_torchs_errors(make, words):
    with pytest.raises(ValueError, match=words):
        make([tn.nn.Parameter(tn.randn(2)), tn.nn.Parameter(tn.randn(3))])


# ---- what the params argument may be ----------------------------------------------------------
def test_sgd_without_lr_takes_torchs_default():
    ours, theirs = make_pair(np.random.default_rng(3))
    assert optim.SGD(ours).defaults["lr"] == torch.optim.SGD(theirs).defaults["lr"] == 1e-3


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_a_set_of_parameters_is_a_type_error_naming_the_optimizer(name):
    """A set's order changes between runs, and that order numbers the parameters in
    state_dict(). PyTorch raises for a set inside a group (checked here) and, a deliberate
    difference, lets a set given directly through; tinynorm raises for both."""
    ours, theirs = make_pair(np.random.default_rng(4))
    with pytest.raises(TypeError, match="sets will change between runs"):
        getattr(torch.optim, name)([{"params": set(theirs)}], lr=0.1)
    for params in (set(ours), frozenset(ours), [{"params": set(ours)}]):
        with pytest.raises(TypeError, match=rf"^{name}: .* but got a (frozen)?set: a set's "
                                            rf"order changes between runs"):
            getattr(optim, name)(params, lr=0.1)


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, weight_decay=0.1)),
                                          ("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1))])
def test_a_parameter_repeated_in_a_group_warns_and_steps_as_in_torch(name, kwargs):
    """PyTorch warns (it plans to make this an error) and updates the parameter once per
    occurrence in each step; so does tinynorm, and its warning says so. (With SGD momentum
    the first step differs: PyTorch gathers the buffers before its loop, so both occurrences
    start a fresh one.)"""
    rng = np.random.default_rng(5)
    ours, theirs = make_pair(rng, shapes=[(3,), (2,)])
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ref = getattr(torch.optim, name)([theirs[0], theirs[1], theirs[0]], **kwargs)
    with pytest.warns(UserWarning, match=rf"{name}: parameter group 0 holds a parameter more "
                                         rf"than once \(at positions 0, 2\); each step "
                                         rf"updates it once per occurrence") as caught:
        opt = getattr(optim, name)([ours[0], ours[1], ours[0]], **kwargs)
    assert caught[0].filename == __file__  # the caller's line, not the optimizer's
    step_both(rng, opt, ref, ours, theirs, 3)
    assert_same_parameters(ours, theirs)
    # a repeat does not hide a later parameter that another group holds already
    fresh = tn.nn.Parameter(tn.zeros(2))
    with pytest.warns(UserWarning, match=r"more than once \(at positions 0, 1\)") as caught:
        with pytest.raises(ValueError, match="some parameters appear in more than one "
                                             "parameter group"):
            opt.add_param_group({"params": [fresh, fresh, ours[1]]})
    assert caught[0].filename == __file__
    assert len(opt.param_groups) == 1


def test_named_parameters_keep_their_names_as_in_torch():
    tn.manual_seed(0)
    model = tn.nn.Sequential(tn.nn.Linear(2, 3), tn.nn.Tanh(), tn.nn.Linear(3, 1))
    ref_model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    opt = optim.Adam(model.named_parameters(), lr=0.01)
    ref = torch.optim.Adam(ref_model.named_parameters(), lr=0.01)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert opt.param_groups[0]["param_names"] == ref.param_groups[0]["param_names"] == names
    assert opt.param_groups[0]["params"] == list(model.parameters())
    saved, expected = opt.state_dict()["param_groups"][0], ref.state_dict()["param_groups"][0]
    assert saved["param_names"] == expected["param_names"] and saved["params"] == [0, 1, 2, 3]
    assert "param_names: ['0.weight'," in repr(opt)

    # names in every group or in none, as in PyTorch
    for lib, make in ((optim, model.named_parameters), (torch.optim, ref_model.named_parameters)):
        pairs = list(make())
        with pytest.raises(ValueError, match="Some param names are missing"):
            lib.SGD([pairs[0], pairs[1][1]], lr=0.1)
        named = lib.SGD(pairs[:2], lr=0.1)
        with pytest.raises(ValueError, match="cannot add param group without names"):
            named.add_param_group({"params": [pairs[2][1]]})
        assert len(named.param_groups) == 1

    # loading a named state_dict into an unnamed optimizer takes the names, as in PyTorch
    plain = optim.Adam(model.parameters(), lr=0.5)
    plain.load_state_dict(opt.state_dict())
    assert plain.param_groups[0]["param_names"] == names and plain.param_groups[0]["lr"] == 0.01


# ---- learning-rate schedules ------------------------------------------------------------------
def lr_trajectories(make_ours, make_theirs, steps=30, groups=1):
    """The lr of every group before each of ``steps`` optimizer steps, on both sides."""
    ps = [tn.nn.Parameter(tn.zeros(1)) for _ in range(groups)]
    ts = [torch.zeros(1, requires_grad=True) for _ in range(groups)]
    opt = optim.SGD([{"params": [p], "lr": 0.5 / (i + 1)} for i, p in enumerate(ps)], lr=0.5)
    ref = torch.optim.SGD([{"params": [t], "lr": 0.5 / (i + 1)} for i, t in enumerate(ts)], lr=0.5)
    ours, theirs = make_ours(opt), make_theirs(ref)
    mine, expected = [], []
    for _ in range(steps):
        mine.append([g["lr"] for g in opt.param_groups])
        expected.append([g["lr"] for g in ref.param_groups])
        assert ours.get_last_lr() == mine[-1]
        assert theirs.get_last_lr() == expected[-1]
        opt.step()
        ref.step()
        ours.step()
        theirs.step()
    assert ours.last_epoch == theirs.last_epoch == steps
    return np.array(mine), np.array(expected)


W, TOTAL = 6, 25
SCHEDULE_CASES = [
    ("lambda", lambda o: lr_scheduler.LambdaLR(o, lambda s: 0.9 ** s),
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9 ** s)),
    ("linear", lambda o: lr_scheduler.LinearLR(o, 0.1, 0.8, 10),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 0.8, 10)),
    ("cosine", lambda o: lr_scheduler.CosineAnnealingLR(o, 12, eta_min=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 12, eta_min=0.01)),
    ("warmup-constant", lambda o: lr_scheduler.WarmupLR(o, W),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / W, 1.0, W - 1)),
    ("warmup-cosine", lambda o: lr_scheduler.warmup_schedule(o, W, "cosine", TOTAL),
     lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
         torch.optim.lr_scheduler.LinearLR(o, 1 / W, 1.0, W - 1),
         torch.optim.lr_scheduler.CosineAnnealingLR(o, TOTAL - W)], milestones=[W])),
    # Vaswani et al.'s d^-0.5 · min(n^-0.5, n · W^-1.5) with n = step + 1, scaled to peak at 1
    ("warmup-inverse-sqrt", lambda o: lr_scheduler.WarmupLR(o, W, "inverse_sqrt"),
     lambda o: torch.optim.lr_scheduler.LambdaLR(
         o, lambda s: W ** 0.5 * min((s + 1) ** -0.5, (s + 1) * W ** -1.5))),
]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("name, ours, theirs", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_schedule_matches_torch(name, ours, theirs, groups):
    mine, expected = lr_trajectories(ours, theirs, steps=TOTAL + 1, groups=groups)
    assert_close(mine, expected, rtol=1e-12, atol=0.0)


def test_warmup_cosine_with_floor_matches_torch_and_stays_at_the_floor():
    floor = 0.1
    mine, expected = lr_trajectories(
        lambda o: lr_scheduler.WarmupLR(o, W, "cosine", TOTAL, min_lr_ratio=floor),
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, 1 / W, 1.0, W - 1),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, TOTAL - W, eta_min=floor * 0.5)],
            milestones=[W]), steps=TOTAL + 1)
    assert_close(mine, expected, rtol=1e-12, atol=0.0)
    assert mine[0, 0] == 0.5 / W and mine[W - 1, 0] == 0.5 and mine[W, 0] == 0.5
    later = [lr_scheduler.warmup_factor(s, W, "cosine", TOTAL, floor) for s in (TOTAL, 2 * TOTAL)]
    assert later == [floor, floor]  # PyTorch's cosine would climb back up after T_max


def test_lambda_per_group_and_state_dict_resume():
    ps = [tn.nn.Parameter(tn.zeros(1)), tn.nn.Parameter(tn.zeros(1))]
    opt = optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 2.0}], lr=1.0)
    sched = lr_scheduler.LambdaLR(opt, [lambda s: 1 / (s + 1), lambda s: 0.5 ** s])
    for _ in range(3):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [1 / 4, 2.0 * 0.5 ** 3]
    saved_sched, saved_opt = sched.state_dict(), copy.deepcopy(opt.state_dict())
    assert saved_sched["last_epoch"] == 3 and "optimizer" not in saved_sched

    opt2 = optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 2.0}], lr=1.0)
    sched2 = lr_scheduler.LambdaLR(opt2, [lambda s: 1 / (s + 1), lambda s: 0.5 ** s])
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    for _ in range(4):
        sched.step()
        sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


def test_scheduler_state_of_another_schedule_is_rejected():
    opt = optim.SGD([tn.nn.Parameter(tn.zeros(1))], lr=1.0)
    sched = lr_scheduler.WarmupLR(opt, 10, "cosine", 100)
    other = lr_scheduler.WarmupLR(optim.SGD([tn.nn.Parameter(tn.zeros(1))], lr=1.0), 5,
                                  "cosine", 100)
    before = sched.state_dict()
    with pytest.raises(ValueError, match="differs from this one's"):
        sched.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="do not match"):
        sched.load_state_dict({"last_epoch": 3})
    assert sched.state_dict() == before


@pytest.mark.parametrize("kwargs, words", [
    (dict(warmup_steps=5, decay="linear"), "decay='linear'"),
    (dict(warmup_steps=5, decay="cosine"), "needs total_steps > warmup_steps"),
    (dict(warmup_steps=0, decay="inverse_sqrt"), "warmup_steps=0"),
])
def test_warmup_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        lr_scheduler.WarmupLR(optim.SGD([tn.nn.Parameter(tn.zeros(1))], lr=1.0), **kwargs)


# ---- clip_grad_norm_ ----------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf"), "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(5)
    ours, theirs = make_pair(rng, SHAPES + [(2, 2)])
    set_grads(rng, ours, theirs, skip=(3,))  # a parameter without a gradient is left out
    total = tn.nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    close(total, expected.numpy(), scale_atol=True)
    for p, t in zip(ours, theirs):
        if t.grad is None:
            assert p.grad is None
        else:
            close(p.grad, t.grad.numpy(), scale_atol=True)
    clipped = max_norm < float(expected)
    assert clipped == (max_norm == 0.5)  # the small bound clips, the large one does not


@pytest.mark.parametrize("norm_type", [2.0, 3.0])
def test_clip_grad_norm_of_float16_gradients_is_taken_in_float32_as_torch(norm_type):
    """10^4 float16 gradients of 3: Σg² = 90000 passed 65504, the norm was inf and clipping
    zeroed every gradient; torch's norm is 300 (computed in float32, rounded once)."""
    grads = np.full((100, 100), 3.0, np.float16)
    p = tn.nn.Parameter(tn.zeros(100, 100, dtype=tn.float16))
    p.grad = grads.copy()
    t = torch.nn.Parameter(torch.zeros(100, 100, dtype=torch.float16))
    t.grad = torch.tensor(grads)
    total = tn.nn.utils.clip_grad_norm_([p], 1.0, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_([t], 1.0, norm_type=norm_type)
    assert total.dtype == np.float16 and np.isfinite(host(total))
    np.testing.assert_allclose(host(total), want.numpy(), rtol=1e-3)
    np.testing.assert_allclose(host(p.grad), t.grad.numpy(), rtol=2e-3)


def test_clip_grad_norm_edge_cases():
    p = tn.nn.Parameter(tn.randn(3))
    assert float(tn.nn.utils.clip_grad_norm_([p], 1.0)) == 0.0  # no gradients at all
    p.grad = tn.tensor([np.inf, 1.0, 0.0], dtype=p.dtype).data
    with pytest.raises(RuntimeError, match="non-finite"):
        tn.nn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    g = tn.tensor([3.0, -4.0]).data
    q = tn.nn.Parameter(tn.zeros(2))
    q.grad = g
    tn.nn.utils.clip_grad_value_([q], 3.5)
    assert q.grad is g and host(g).tolist() == [3.0, -3.5]
