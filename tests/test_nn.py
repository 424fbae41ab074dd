"""tinynorm.nn against torch.nn: names, order, state_dict, repr, init, modes, parity."""
import copy
import math
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

import tinynorm as tn
from tinynorm import nn
from tinynorm.nn import functional as F
from tinynorm.testing import gradcheck
from tinynorm.testing.compare import to_host as host


# ---- an equivalent pair of nested models ------------------------------------------------------
def make_block(lib):
    """The same structure built from ``lib`` (torch.nn or tinynorm.nn): nested Sequential,
    ModuleList, a shared parameter, persistent and non-persistent buffers, a None bias."""

    class Block(lib.Module):
        def __init__(self):
            super().__init__()
            self.proj = lib.Linear(3, 4)
            self.register_buffer("scale", tensor_lib.ones(4))
            self.layers = lib.ModuleList([lib.Linear(4, 4), lib.Linear(4, 4, bias=False)])
            self.register_buffer("step", tensor_lib.zeros(1), persistent=False)
            self.head = lib.Sequential(lib.Tanh(), lib.Linear(4, 2))
            self.gain = lib.Parameter(tensor_lib.ones(2))
            self.tied = self.layers[0]  # the same module under two names

    tensor_lib = torch if lib is torch.nn else tn
    return Block()


def test_names_and_order_match_torch():
    ours, theirs = make_block(nn), make_block(torch.nn)
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]
    assert [k for k, _ in ours.named_children()] == [k for k, _ in theirs.named_children()]
    # state_dict lists shared tensors under every name, and skips non-persistent buffers
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "tied.weight" in ours.state_dict() and "step" not in ours.state_dict()
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    assert len(list(ours.modules())) == len(list(theirs.modules()))
    assert repr(ours) == repr(theirs)


def test_named_parameters_prefix_and_no_recurse():
    ours, theirs = make_block(nn), make_block(torch.nn)
    assert [k for k, _ in ours.named_parameters(prefix="m", recurse=False)] == \
        [k for k, _ in theirs.named_parameters(prefix="m", recurse=False)] == ["m.gain"]
    assert [k for k, _ in ours.named_parameters(remove_duplicate=False)] == \
        [k for k, _ in theirs.named_parameters(remove_duplicate=False)]


# ---- the torch Sequential of the issue, in float64 -----------------------------------------------
def torch_mlp():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3),
                               torch.nn.GELU()).double()


def tn_mlp(dtype=tn.float64):
    return nn.Sequential(nn.Linear(4, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 3, dtype=dtype),
                         nn.GELU())


@pytest.mark.parametrize("convert", ["numpy", "torch"])
def test_torch_state_dict_gives_identical_outputs_and_gradients(convert):
    theirs = torch_mlp()
    sd = theirs.state_dict()
    ours = tn_mlp()
    result = ours.load_state_dict({k: v.numpy() for k, v in sd.items()} if convert == "numpy"
                                  else sd)  # torch CPU tensors, through __array__
    assert result.missing_keys == [] and result.unexpected_keys == []

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((5, 4))
    upstream = rng.standard_normal((5, 3))  # random, never all ones
    x = tn.tensor(x_np, requires_grad=True)
    y = ours(x)
    y.backward(upstream)
    xt = torch.tensor(x_np, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(upstream))

    np.testing.assert_allclose(host(y), yt.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(x.grad), xt.grad.numpy(), rtol=0, atol=1e-12)
    ours_params = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(ours_params[name].grad), p.grad.numpy(), rtol=0, atol=1e-12,
                                   err_msg=name)


def test_gradient_through_module_matches_finite_differences():
    model = tn_mlp()
    x = tn.tensor(np.random.default_rng(1).standard_normal((3, 4)), requires_grad=True)
    assert gradcheck(model, (x,))


def test_state_dict_round_trip_and_copies():
    tn.manual_seed(0)
    source, target = make_block(nn), make_block(nn)
    sd = source.state_dict()
    assert isinstance(sd, OrderedDict) and all(isinstance(v, np.ndarray) for v in sd.values())
    sd["proj.weight"][...] = 7.0  # a copy: the module is untouched
    assert not np.any(source.proj.weight.data == 7.0)
    target.load_state_dict(source.state_dict())
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    # loading copies: the target does not alias the source's arrays
    assert target.proj.weight.data is not source.proj.weight.data
    kept = target.state_dict(keep_vars=True)
    assert kept["proj.weight"] is target.proj.weight


# ---- strict loading, errors, atomicity ---------------------------------------------------------
def broken_state(model):
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    del sd["0.bias"], sd["2.weight"]
    sd["0.weight"] = np.zeros((8, 5))  # shape mismatch
    sd["2.bias"] = np.zeros(4)  # shape mismatch
    sd["9.weight"] = np.zeros(1)
    sd["extra"] = np.zeros(1)
    return sd


def test_strict_load_lists_every_problem_like_torch():
    ours = tn_mlp()
    sd = broken_state(ours)
    with pytest.raises(RuntimeError) as ours_err:
        ours.load_state_dict(sd)
    with pytest.raises(RuntimeError) as torch_err:
        torch_mlp().load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    msg, expected = str(ours_err.value), str(torch_err.value)
    assert msg.startswith("Error(s) in loading state_dict for Sequential:\n\t")
    # The missing and unexpected lines are PyTorch's verbatim; size lines differ only in
    # how a shape prints (torch.Size([8, 5]) there, (8, 5) here).
    assert msg.split("\n")[:3] == expected.split("\n")[:3]
    assert 'Missing key(s) in state_dict: "0.bias", "2.weight". ' in msg
    assert 'Unexpected key(s) in state_dict: "9.weight", "extra". ' in msg
    assert ("size mismatch for 0.weight: copying a param with shape (8, 5) from checkpoint, "
            "the shape in current model is (8, 4).") in msg
    assert "size mismatch for 2.bias" in msg and len(msg.split("\n")) == 5


def test_failed_load_changes_nothing():
    ours = tn_mlp()
    before = [p.data.copy() for p in ours.parameters()]
    good = {k: v + 1.0 for k, v in ours.state_dict().items()}
    bad = dict(good, **{"2.bias": np.zeros(4)})  # all keys fine but one shape
    for strict in (True, False):
        with pytest.raises(RuntimeError, match="size mismatch for 2.bias"):
            ours.load_state_dict(bad, strict=strict)
        for p, b in zip(ours.parameters(), before):
            np.testing.assert_array_equal(host(p.data), host(b))
    with pytest.raises(RuntimeError, match="Unexpected"):
        ours.load_state_dict(dict(good, extra=np.zeros(1)))
    for p, b in zip(ours.parameters(), before):
        np.testing.assert_array_equal(host(p.data), host(b))


def test_non_strict_returns_missing_and_unexpected():
    ours = tn_mlp()
    sd = ours.state_dict()
    del sd["2.bias"]
    sd["extra"] = np.ones(2)
    result = ours.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["2.bias"] and result.unexpected_keys == ["extra"]
    assert result == torch_mlp().load_state_dict(
        {k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)


def test_load_rejects_non_arrays_by_name():
    with pytest.raises(RuntimeError, match='parameter named "0.bias"'):
        tn_mlp().load_state_dict(dict(tn_mlp().state_dict(), **{"0.bias": "zeros"}))


def test_load_casts_to_each_parameters_dtype():
    ours = tn_mlp(dtype=tn.float32)
    sd = torch_mlp().state_dict()  # float64
    weights = [p for p in ours.parameters()]
    ours.load_state_dict(sd)
    assert [p for p in ours.parameters()] == weights  # same objects
    for name, p in ours.named_parameters():
        assert p.dtype == tn.float32
        np.testing.assert_array_equal(host(p.data), sd[name].numpy().astype(np.float32))


UNUSABLE = {  # value for the last key ("3.bias" of shape (3,)) -> words of the error
    "strings": (np.array(["a", "b", "c"]), "values that are not numbers: an array of dtype <U1"),
    "None in an object array": (np.array([None, 1.0, 2.0]), "an array of dtype object"),
    "complex": (np.ones(3, np.complex128), "complex values (their imaginary parts would be"),
    "datetimes": (np.array(["2020-01-01"] * 3, "datetime64[D]"), "dtype datetime64[D]"),
}


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_a_value_that_cannot_be_cast_fails_the_load_before_anything_is_written(name):
    """The last key's value is unusable: the error names it, its dtype and what was
    expected, and the parameters written before it in the old write loop are unchanged."""
    value, words = UNUSABLE[name]
    ours = tn_mlp()
    before = [host(p.data).copy() for p in ours.parameters()]
    sd = {k: v + 1.0 for k, v in ours.state_dict().items()}
    sd["2.bias"] = value
    with pytest.raises(RuntimeError) as err:
        ours.load_state_dict(sd)
    msg = str(err.value)
    assert 'While copying the parameter named "2.bias", expected numbers (bool, int or float) '\
           'to cast to float64' in msg and words in msg and "shape (3,)" in msg
    for p, b in zip(ours.parameters(), before):
        np.testing.assert_array_equal(host(p.data), b)


def test_load_takes_torch_tensors_that_require_grad_as_torch_does():
    theirs = torch_mlp()
    sd = theirs.state_dict(keep_vars=True)  # the Parameters themselves, requiring grad
    assert sd["0.weight"].requires_grad
    ours = tn_mlp()
    ours.load_state_dict(sd)
    torch_mlp().load_state_dict(sd)  # torch takes them too
    for name, p in ours.named_parameters():
        np.testing.assert_array_equal(host(p.data), sd[name].detach().numpy(), err_msg=name)


@pytest.mark.parametrize("dtype", [tn.float16, tn.float32, tn.float64], ids=str)
def test_load_converts_bfloat16_torch_tensors_as_torchs_copy_does(dtype):
    values = torch.tensor([1.1, -2.2, 3.3e-3, 6.0e4], dtype=torch.bfloat16)
    ours = nn.Linear(1, 4, dtype=dtype)
    ours.load_state_dict({"weight": torch.zeros(4, 1), "bias": values})
    expected = torch.zeros(4, dtype=getattr(torch, str(dtype))).copy_(values)
    np.testing.assert_array_equal(host(ours.bias.data), expected.numpy())
    assert ours.bias.dtype == dtype


# ---- modes, grads, dtype moves ------------------------------------------------------------------
def test_train_eval_propagate_to_every_module():
    model = make_block(nn)
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.head.train(False)
    assert model.training and not model.head[1].training and model.proj.training
    with pytest.raises(ValueError):
        model.train("yes")


def test_zero_grad():
    model = tn_mlp()
    model(tn.randn(2, 4, dtype=tn.float64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_to_double_keeps_parameter_objects_and_converts_grads_and_buffers():
    model = make_block(nn)
    model.register_buffer("count", tn.tensor([3]))  # integer: dtype moves leave it alone
    params = list(model.parameters())
    model.proj.weight.grad = tn.backend.xp().ones((4, 3), dtype=np.float32)
    assert model.to(tn.float64) is model
    assert list(model.parameters()) == params
    assert all(p.dtype == tn.float64 for p in params)
    assert model.proj.weight.grad.dtype == np.float64 and model.scale.dtype == tn.float64
    assert model.count.dtype == tn.int64
    model.float()
    assert list(model.parameters()) == params and all(p.dtype == tn.float32 for p in params)
    model.double()
    assert list(model.parameters()) == params and all(p.dtype == tn.float64 for p in params)
    assert model.cpu() is model and all(p.device == "cpu" for p in params)
    with pytest.raises(TypeError, match="floating point"):
        model.to(tn.int32)


def test_linear_repr_and_layers_repr_match_torch():
    for args in [(4, 8), (3, 2, False)]:
        assert repr(nn.Linear(*args)) == repr(torch.nn.Linear(*args))
    assert repr(tn_mlp()) == repr(torch_mlp())
    pairs = [(nn.ReLU(), torch.nn.ReLU()), (nn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
             (nn.GELU("tanh"), torch.nn.GELU("tanh")), (nn.Dropout(0.1), torch.nn.Dropout(0.1)),
             (nn.Softmax(dim=-1), torch.nn.Softmax(dim=-1)), (nn.Identity(), torch.nn.Identity()),
             (nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2), nn.Tanh()]),
              torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Tanh()]))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_parameter_is_a_leaf_that_requires_grad():
    p = nn.Parameter(tn.zeros(2))
    assert isinstance(p, tn.Tensor) and p.is_leaf and p.requires_grad
    assert repr(p).startswith("Parameter containing:\n") and "requires_grad=True" in repr(p)
    assert not nn.Parameter(tn.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(TypeError):
        nn.Parameter([1.0, 2.0])


# ---- registration rules -------------------------------------------------------------------------
def test_registration_errors_and_deletion():
    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tn.zeros(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        lin.weight = tn.zeros(2, 2)  # a plain Tensor is not a Parameter
    lin.bias = None
    assert [k for k, _ in lin.named_parameters()] == ["weight"] and "bias" in lin._parameters
    with pytest.raises(KeyError):
        lin.register_parameter("a.b", nn.Parameter(tn.zeros(1)))
    del lin.weight
    assert list(lin.parameters()) == []
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'weight'"):
        lin.weight
    lin.extra = 3  # plain attributes stay plain
    assert lin.extra == 3 and "extra" not in lin.state_dict()


def test_get_submodule_apply_requires_grad():
    model = make_block(nn)
    assert model.get_submodule("head.1") is model.head[1]
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError, match="nope"):
        model.get_submodule("head.nope")
    seen, torch_seen = [], []
    model.apply(lambda m: seen.append(type(m).__name__))
    make_block(torch.nn).apply(lambda m: torch_seen.append(type(m).__name__))
    assert seen == torch_seen and seen[-1] == "Block"  # children first; tied visited twice
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())


def test_sequential_and_module_list_behave_like_lists():
    a, b, c = nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)
    seq = nn.Sequential(a, b)
    assert len(seq) == 2 and seq[0] is a and seq[-1] is b and list(seq) == [a, b]
    seq.append(c)
    assert seq[2] is c and list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    sliced = seq[1:]
    assert isinstance(sliced, nn.Sequential) and list(sliced._modules) == ["1", "2"]
    del seq[0]
    assert list(seq._modules) == ["0", "1"] and seq[0] is b
    named = nn.Sequential(OrderedDict([("fc", a), ("act", b)]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    x = tn.randn(3, 2)
    np.testing.assert_allclose(host(named(x)), np.tanh(host(a(x))), rtol=1e-6)

    ml = nn.ModuleList([a])
    ml.append(b).extend([c])
    assert len(ml) == 3 and ml[1] is b and list(ml) == [a, b, c]
    part = ml[1:]
    assert isinstance(part, nn.ModuleList) and list(part) == [b, c]
    assert [k for k, _ in ml.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(IndexError):
        ml[3]


def both(make):
    """``make(lib)`` for torch.nn and tinynorm.nn: the children's class names, or the
    exception's type, and tinynorm's error message ("" without one)."""
    out, message = [], ""
    for lib in (torch.nn, nn):
        try:
            out.append([type(m).__name__ for m in make(lib)])
        except Exception as err:  # the same kind of error on both sides is the point
            out.append(type(err))
            message = str(err) if lib is nn else message
    return out + [message]


def extended(lib):
    layers = lib.ModuleList([lib.Tanh()])
    layers += lib.ModuleList([lib.ReLU()])
    return layers


@pytest.mark.parametrize("make", [
    lambda lib: lib.ModuleList(lib.ModuleList([lib.Tanh(), lib.ReLU()])),
    lambda lib: lib.ModuleList(lib.Sequential(lib.Tanh(), lib.ReLU())),
    extended,
    lambda lib: lib.Sequential(lib.Tanh()).extend(lib.Sequential(lib.ReLU())),
    lambda lib: lib.Sequential(lib.Tanh()).extend(lib.ModuleList([lib.ReLU()])),
    lambda lib: lib.ModuleList([lib.Tanh()]) + lib.ModuleList([lib.ReLU()]),
    lambda lib: lib.ModuleList(lib.Linear(2, 2)),  # one Module is not an iterable of them
    lambda lib: lib.Sequential().extend(lib.Linear(2, 2)),
    lambda lib: lib.ModuleList(lib.ModuleDict({"a": lib.Tanh()})),  # its keys: strings
    lambda lib: lib.ModuleList().extend(5),
], ids=["ModuleList(ModuleList)", "ModuleList(Sequential)", "ModuleList += ModuleList",
        "Sequential.extend(Sequential)", "Sequential.extend(ModuleList)",
        "ModuleList + ModuleList", "ModuleList(Linear)", "Sequential.extend(Linear)",
        "ModuleList(ModuleDict)", "extend(5)"])
def test_containers_extend_with_other_containers_as_torch_does(make):
    theirs, ours, message = both(make)
    assert ours == theirs
    assert ours == ["Tanh", "ReLU"] or ours is TypeError
    if ours is TypeError:  # our own error, naming the container and what it expected
        assert re.match(r"(ModuleList|Sequential)\.extend.*(Modules|not a Module)", message)


def test_a_failed_extend_changes_nothing():
    layers = nn.ModuleList([nn.Tanh()])
    with pytest.raises(TypeError, match=r"ModuleList.extend: element 1 is a str, not a Module"):
        layers.extend([nn.ReLU(), "relu"])
    with pytest.raises(TypeError, match=r"ModuleDict gives its keys: pass .values\(\)"):
        layers.extend(nn.ModuleDict({"a": nn.ReLU()}))
    assert [type(m).__name__ for m in layers] == ["Tanh"] and list(layers._modules) == ["0"]


# ---- init ---------------------------------------------------------------------------------------
def test_linear_init_bounds_and_spread():
    tn.manual_seed(0)
    fan_in = 50
    lin = nn.Linear(fan_in, 400)
    bound = 1 / math.sqrt(fan_in)
    w, b = lin.weight.data, lin.bias.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # 20000 uniform draws: the std of U(±bound) is bound/√3, estimated within ~1%
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert np.abs(w).max() > 0.99 * bound  # the whole range is used


def test_init_formulas():
    tn.manual_seed(1)
    w = tn.empty(300, 200, dtype=tn.float64)
    nn.init.xavier_uniform_(w)
    a = math.sqrt(6 / (200 + 300))
    assert np.abs(w.data).max() <= a and np.abs(w.data).max() > 0.99 * a
    nn.init.xavier_normal_(w, gain=2.0)
    assert abs(w.data.std() - 2 * math.sqrt(2 / 500)) < 0.02 * 2 * math.sqrt(2 / 500)
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.data.std() - math.sqrt(2 / 200)) < 0.02 * math.sqrt(2 / 200)
    nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu")
    bound = math.sqrt(3) * math.sqrt(2 / 300)
    assert np.abs(w.data).max() <= bound and np.abs(w.data).max() > 0.99 * bound
    conv = tn.empty(6, 4, 3, 3, dtype=tn.float64)  # fan_in = 4·9: receptive field counts
    nn.init.kaiming_uniform_(conv, a=math.sqrt(5))
    assert np.abs(conv.data).max() <= 1 / math.sqrt(36)
    nn.init.normal_(w, mean=3.0, std=0.5)
    assert abs(w.data.mean() - 3.0) < 0.01 and abs(w.data.std() - 0.5) < 0.01
    nn.init.uniform_(w, -2.0, -1.0)
    assert w.data.min() >= -2.0 and w.data.max() <= -1.0
    assert not nn.init.zeros_(w).data.any() and (nn.init.ones_(w).data == 1).all()
    assert (nn.init.constant_(w, 0.25).data == 0.25).all()
    for name, param in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                        ("leaky_relu", 0.2), ("selu", None), ("sigmoid", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(tn.empty(3))


def test_manual_seed_makes_init_reproducible():
    tn.manual_seed(42)
    first = make_block(nn).state_dict()
    tn.manual_seed(42)
    second = make_block(nn).state_dict()
    third = make_block(nn).state_dict()
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    assert not np.array_equal(first["proj.weight"], third["proj.weight"])


# ---- activations and dropout --------------------------------------------------------------------
def test_activation_modules_match_torch():
    x_np = np.random.default_rng(2).standard_normal((4, 5))
    x, xt = tn.tensor(x_np), torch.tensor(x_np)
    pairs = [(nn.Tanh(), torch.nn.Tanh()), (nn.ReLU(), torch.nn.ReLU()),
             (nn.GELU(), torch.nn.GELU()), (nn.GELU("tanh"), torch.nn.GELU("tanh")),
             (nn.Softmax(dim=-1), torch.nn.Softmax(dim=-1)),
             (nn.LogSoftmax(dim=0), torch.nn.LogSoftmax(dim=0)),
             (nn.Identity(), torch.nn.Identity())]
    for ours, theirs in pairs:
        np.testing.assert_allclose(host(ours(x)), theirs(xt).numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=repr(ours))
    with pytest.raises(ValueError, match="dim is required"):
        nn.Softmax()(x)


def test_dropout_train_and_eval():
    tn.manual_seed(0)
    drop = nn.Dropout(p=0.25)
    x = tn.tensor(np.random.default_rng(3).uniform(1, 2, size=(200, 50)))
    y = host(drop(x))
    kept = y != 0
    assert 0.72 < kept.mean() < 0.78  # 10000 Bernoulli(0.75) draws: sd of the mean ≈ 0.004
    np.testing.assert_allclose(y[kept], host(x)[kept] / 0.75, rtol=1e-15)
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_functional_names():
    for name in ["linear", "tanh", "relu", "gelu", "softmax", "log_softmax", "dropout"]:
        assert callable(getattr(F, name))


def test_deepcopy_copies_parameters():
    model = tn_mlp()
    clone = copy.deepcopy(model)
    assert isinstance(clone[0].weight, nn.Parameter) and clone[0].weight.requires_grad
    assert clone[0].weight.data is not model[0].weight.data
    for (k, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_module_list_insert_checks_like_sequential():
    """ModuleList.insert takes negative indices as a list does and refuses non-Modules and
    out-of-range indices (the checks Sequential.insert makes; they now share them)."""
    from tinynorm import nn as tnn

    layers = tnn.ModuleList([tnn.Linear(1, 1), tnn.Linear(1, 2)])
    layers.insert(-1, tnn.ReLU())
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert list(dict(layers.named_children())) == ["0", "1", "2"]
    with pytest.raises(TypeError, match="expected a Module"):
        layers.insert(0, "not a module")
    with pytest.raises(IndexError):
        layers.insert(7, tnn.ReLU())
