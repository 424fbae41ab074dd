"""The core's shared helpers, through every entry point that uses them.

* device strings: ``backend.backend_of`` is the one reader; each caller names itself in its
  error. Moves to "cuda" run on the NumPy stand-in for CuPy (tests/cuda_emulator.py).
* ``.to(...)`` arguments: ``tensor.parse_to``, shared by ``Tensor.to`` and ``Module.to``.
"""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import tinynorm as tn
from cuda_emulator import EMULATED_CUPY, on_gpu
from tinynorm import backend, nn, optim
from tinynorm.testing.compare import to_host as host

RNG = np.random.default_rng(7)
FORMS = "'cpu', 'cuda' or 'cuda:N'"
BAD_DEVICES = ["tpu", "mps", "cuda0", "cudax", "cpu1", "cuda:", "cuda:-1", "cuda:x", "",
               " cuda", "cuda:0 ", "CUDA"]


@pytest.fixture
def emulated_gpu(monkeypatch):
    """backend's CuPy is the emulator: arrays moved to "cuda" are EmulatedGPUArrays."""
    monkeypatch.setattr(backend, "_cupy", EMULATED_CUPY)
    monkeypatch.setattr(backend, "_current", "numpy")  # the suite may run under --backend cupy


# ---- device strings --------------------------------------------------------------------
@pytest.mark.parametrize("device,name", [("cpu", "numpy"), ("cpu:0", "numpy"),
                                         ("cuda", "cupy"), ("cuda:0", "cupy"),
                                         ("cuda:12", "cupy")])
def test_backend_of_reads_every_accepted_form(device, name):
    assert backend.backend_of(device) == name
    assert backend.backend_of(None) == backend.current()


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_backend_of_rejects_near_misses_naming_the_op_and_the_value(device):
    with pytest.raises(ValueError) as info:
        backend.backend_of(device, op="my_op")
    assert str(info.value) == f"my_op: unknown device {device!r}; expected {FORMS}"


ENTRY_POINTS = [  # (the name its error gives, a call with device d)
    ("Tensor.to", lambda d: tn.tensor([1.0, 2.0], device="cpu").to(d)),
    ("Tensor.to", lambda d: tn.tensor([1.0, 2.0], device="cpu").to(d, tn.float64)),
    ("Tensor.to", lambda d: tn.tensor([1.0, 2.0], device="cpu").to(device=d)),
    ("Module.to", lambda d: nn.Linear(2, 2).to(d)),
    ("Module.to", lambda d: nn.Linear(2, 2).to(device=d, dtype=tn.float64)),
    ("Module.to", lambda d: nn.Linear(2, 2).cuda(d)),
    ("tinynorm.tensor", lambda d: tn.tensor([1.0], device=d)),
    ("tinynorm.tensor", lambda d: tn.tensor(np.ones(2), device=d)),
    ("tinynorm.zeros", lambda d: tn.zeros(2, device=d)),
    ("tinynorm.ones", lambda d: tn.ones(2, device=d)),
    ("tinynorm.full", lambda d: tn.full((2,), 3.0, device=d)),
    ("tinynorm.empty", lambda d: tn.empty(2, device=d)),
    ("tinynorm.randn", lambda d: tn.randn(2, device=d)),
    ("tinynorm.rand", lambda d: tn.rand(2, device=d)),
    ("tinynorm.arange", lambda d: tn.arange(3, device=d)),
]


@pytest.mark.parametrize("name,call", ENTRY_POINTS)
@pytest.mark.parametrize("device", ["tpu", "cuda0", "cpu1"])
def test_each_entry_point_names_itself_the_bad_device_and_the_forms(name, call, device):
    message = f"{name}: unknown device {device!r}; expected {FORMS}"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        call(device)


def test_tensor_keeps_or_moves_arrays_by_device(emulated_gpu):
    host = RNG.standard_normal(3)
    gpu = tn.tensor(host, device="cuda:0")
    assert gpu.device == "cuda:0" and gpu.dtype == np.float64
    assert tn.tensor(gpu.data).device == "cuda:0"  # an array's own device by default
    back = tn.tensor(gpu.data, device="cpu")
    assert back.device == "cpu" and type(back.data) is np.ndarray
    assert back.tolist() == host.tolist()
    assert tn.zeros_like(gpu).device == "cuda:0" and tn.ones(2, device="cuda").device == "cuda:0"


# ---- .to(...) arguments ----------------------------------------------------------------
def _gpu64():
    return tn.tensor(on_gpu(np.zeros(1)))


TO_FORMS = [  # (args, kwargs) -> (device, dtype) of a float32 CPU tensor moved by them
    ((), {}, "cpu", np.float32),
    (("cuda:0",), {}, "cuda:0", np.float32),
    (("cuda",), {}, "cuda:0", np.float32),
    ((tn.float64,), {}, "cpu", np.float64),
    (("float64",), None, None, None),  # a string is a device: not a dtype name
    (("cuda", tn.float64), {}, "cuda:0", np.float64),
    (("cuda",), {"dtype": tn.float64}, "cuda:0", np.float64),
    ((), {"device": "cuda:0", "dtype": "float64"}, "cuda:0", np.float64),
    ((), {"dtype": tn.float64, "non_blocking": True}, "cpu", np.float64),
    ((None, tn.float64), {}, "cpu", np.float64),
    (("__gpu64__",), {}, "cuda:0", np.float64),  # to(other): other's device and dtype
]


@pytest.mark.parametrize("args,kwargs,device,dtype", TO_FORMS)
def test_tensor_to_forms(emulated_gpu, args, kwargs, device, dtype):
    args = tuple(_gpu64() if a == "__gpu64__" else a for a in args)
    x = tn.tensor(RNG.standard_normal(3), dtype=tn.float32, device="cpu", requires_grad=True)
    if kwargs is None:
        with pytest.raises(ValueError, match=re.escape("Tensor.to: unknown device 'float64'")):
            x.to(*args)
        return
    y = x.to(*args, **kwargs)
    assert y.device == device and y.dtype == dtype
    assert (y is x) == (device == "cpu" and dtype == np.float32)  # nothing to do: x itself
    w = RNG.standard_normal(3)
    (y * tn.tensor(w, device=device)).sum().backward()  # differentiable, back to x's device
    assert type(x.grad) is np.ndarray and x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, w.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("args,kwargs,device,dtype", TO_FORMS)
def test_module_to_forms_move_in_place(emulated_gpu, args, kwargs, device, dtype):
    args = tuple(_gpu64() if a == "__gpu64__" else a for a in args)
    model = nn.Linear(3, 2)
    model.register_buffer("count", tn.tensor([3], device="cpu"))
    params = list(model.parameters())
    model.weight.grad = RNG.standard_normal((2, 3)).astype(np.float32)
    if kwargs is None:
        with pytest.raises(ValueError, match=re.escape("Module.to: unknown device 'float64'")):
            model.to(*args)
        return
    assert model.to(*args, **kwargs) is model and list(model.parameters()) == params
    assert all(p.device == device and p.dtype == dtype for p in params)
    assert backend.device_of(model.weight.grad) == device and model.weight.grad.dtype == dtype
    assert model.count.device == device and model.count.dtype == np.int64  # ints keep dtype
    model.to("cpu")
    assert all(type(p.data) is np.ndarray for p in params)


@pytest.mark.parametrize("method", ["Tensor.to", "Module.to"])
@pytest.mark.parametrize("args,kwargs,error", [
    ((tn.float64, "cpu"), {}, "too many positional arguments"),
    (("cpu", tn.float64, True), {}, "too many positional arguments"),
    (("__t__", tn.float64), {}, "too many positional arguments"),
    (("cpu",), {"device": "cpu"}, "device given both positionally and as a keyword"),
    ((tn.float64,), {"dtype": tn.float32}, "dtype given both positionally and as a keyword"),
    (("__t__",), {"device": "cpu"}, "device given both positionally and as a keyword"),
    ((), {"copy": True}, "unexpected arguments ['copy']"),
    ((), {"memory_format": 0, "devic": "cpu"}, "unexpected arguments ['devic', 'memory_format']"),
    ((0,), {}, "0 is not a dtype"),
    (("cpu", "cuda"), {}, "'cuda' is not a dtype"),
    ((), {"dtype": "float"}, None),  # a NumPy dtype name is a dtype
])
def test_to_argument_errors_name_the_method_the_value_and_the_forms(method, args, kwargs, error):
    target = tn.tensor([1.0], device="cpu") if method == "Tensor.to" else nn.Linear(1, 1)
    args = tuple(tn.tensor([1.0]) if a == "__t__" else a for a in args)
    if error is None:
        target.to(*args, **kwargs)
        return
    forms = f"{method}(dtype), {method}(device), {method}(device, dtype) or {method}(tensor)"
    with pytest.raises(TypeError) as info:
        target.to(*args, **kwargs)
    assert str(info.value).startswith(f"{method}: {error}") and forms in str(info.value)


def test_module_to_refuses_integer_dtypes_also_from_a_tensor():
    with pytest.raises(TypeError, match="Module.to only accepts floating point dtypes, but got "
                                        "desired dtype=int64"):
        nn.Linear(2, 2).to(tn.tensor([1]))
    assert tn.tensor([1.5], device="cpu").to(tn.tensor([1])).dtype == np.int64


def test_state_dicts_load_onto_the_parameters_device(emulated_gpu):
    cpu_model = nn.Linear(3, 2).double()
    cpu_opt = optim.Adam(cpu_model.parameters(), lr=0.1)
    for p in cpu_model.parameters():
        p.grad = RNG.standard_normal(p.shape)
    cpu_opt.step()
    gpu_model = nn.Linear(3, 2).to("cuda:0", tn.float64)
    gpu_opt = optim.Adam(gpu_model.parameters(), lr=0.1)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_opt.load_state_dict(cpu_opt.state_dict())
    for ours, theirs in zip(gpu_model.parameters(), cpu_model.parameters()):
        assert ours.device == "cuda:0"
        np.testing.assert_array_equal(backend.to_numpy(ours.data), theirs.data)
        for key in ("exp_avg", "exp_avg_sq"):
            state = gpu_opt.state[ours][key]
            assert backend.device_of(state) == "cuda:0" and state.dtype == np.float64
            np.testing.assert_array_equal(backend.to_numpy(state), cpu_opt.state[theirs][key])


# ---- zero_grad: one implementation (autograd.zero_grads) behind Module and Optimizer ----
def _model_with_grads():
    """Two Linears sharing one weight, a third parameter left without a gradient."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    model[1].weight = model[0].weight
    x = tn.tensor(RNG.standard_normal((4, 3)), dtype=tn.float32)
    (model[1](model[0](x)) * tn.tensor(RNG.standard_normal((4, 3)))).sum().backward()
    assert model[2].weight.grad is None and model[0].weight.grad.any()
    return model


ZEROERS = {
    "Module": lambda model: model.zero_grad,
    "Optimizer": lambda model: optim.SGD(model.parameters(), lr=0.1).zero_grad,
    "Optimizer, two groups": lambda model: optim.SGD(
        [{"params": list(model[0].parameters())},
         {"params": [model[1].bias] + list(model[2].parameters()), "lr": 0.2}],
        lr=0.1).zero_grad,
}


@pytest.mark.parametrize("owner", ZEROERS)
def test_zero_grad_sets_to_none_by_default_and_when_asked(owner):
    model = _model_with_grads()
    zero_grad = ZEROERS[owner](model)
    zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    model = _model_with_grads()
    ZEROERS[owner](model)()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("owner", ZEROERS)
def test_zero_grad_without_set_to_none_zeroes_in_place(owner):
    model = _model_with_grads()
    arrays = {id(p): p.grad for p in model.parameters()}
    ZEROERS[owner](model)(set_to_none=False)
    for p in model.parameters():
        if arrays[id(p)] is None:
            assert p.grad is None  # no gradient yet: stays None, as in PyTorch
        else:
            assert p.grad is arrays[id(p)] and p.grad.shape == p.shape and not p.grad.any()
    x = tn.tensor(RNG.standard_normal((2, 3)), dtype=tn.float32)
    w = RNG.standard_normal((2, 3))
    (model[0](x) * tn.tensor(w)).sum().backward()  # accumulates into the zeroed arrays
    np.testing.assert_allclose(host(model[0].bias.grad), w.sum(0), rtol=1e-6)


def test_zero_grads_over_any_iterable():
    from tinynorm.autograd import zero_grads

    a, b = nn.Parameter(tn.ones(2)), nn.Parameter(tn.ones(3))
    xp = backend.xp()
    a.grad, b.grad = xp.array([1.0, 2.0], np.float32), xp.array([3.0, 4.0, 5.0], np.float32)
    zero_grads(iter([a]), set_to_none=False)
    assert a.grad.tolist() == [0.0, 0.0] and b.grad.tolist() == [3.0, 4.0, 5.0]
    zero_grads(p for p in (a, b))
    assert a.grad is None and b.grad is None


# ---- grad mode and anomaly detection: one "flag for a block" class (autograd._FlagMode) --
class MakesNaN(tn.Function):
    """y = x · nan (no floating-point warning): what detect_anomaly must stop."""

    @staticmethod
    def forward(ctx, x):
        return x * np.nan

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out * np.nan


def _anomaly_on() -> bool:
    """Whether detect_anomaly is in force, seen only through its effect."""
    try:
        MakesNaN.apply(tn.tensor([1.0]))
    except RuntimeError as err:
        assert "detect_anomaly: MakesNaN.forward produced nan" in str(err)
        return True
    return False


MODES = {  # name -> (make a fresh block, read the flag, the flag's value inside, outside)
    "no_grad": (tn.no_grad, tn.is_grad_enabled, False, True),
    "enable_grad": (tn.enable_grad, tn.is_grad_enabled, True, False),
    "set_grad_enabled(False)": (lambda: tn.set_grad_enabled(False), tn.is_grad_enabled,
                                False, True),
    "set_grad_enabled(True)": (lambda: tn.set_grad_enabled(True), tn.is_grad_enabled,
                               True, False),
    "detect_anomaly": (tn.detect_anomaly, _anomaly_on, True, False),
}


@pytest.fixture(params=list(MODES))
def mode(request):
    """A MODES entry, run from its flag's `outside` value; the flags are checked after."""
    make, read, inside, outside = MODES[request.param]
    with tn.set_grad_enabled(outside if read is tn.is_grad_enabled else True):
        assert read() is outside
        yield make, read, inside, outside
        assert read() is outside
    assert tn.is_grad_enabled() and not _anomaly_on()


def test_mode_as_a_context_manager_restores_the_flag_also_after_an_exception(mode):
    make, read, inside, outside = mode
    with make():
        assert read() is inside
    assert read() is outside
    with pytest.raises(KeyError):
        with make():
            assert read() is inside
            raise KeyError("boom")
    assert read() is outside


def test_mode_as_a_decorator_switches_per_call_also_recursively_and_on_exceptions(mode):
    make, read, inside, outside = mode

    @make()
    def depth(n, fail=False):  # one decorator instance, entered again by each recursive call
        assert read() is inside
        if n == 0 and fail:
            raise ValueError("at the bottom")
        return 0 if n == 0 else 1 + depth(n - 1, fail)

    assert read() is outside, "decorating must not switch the flag"
    assert depth(3) == 3 and read() is outside
    with pytest.raises(ValueError, match="at the bottom"):
        depth(2, fail=True)
    assert read() is outside
    assert depth(0) == 0 and read() is outside  # the instance is still usable


OPPOSITE = {"no_grad": tn.enable_grad, "enable_grad": tn.no_grad, "detect_anomaly": None}


@pytest.mark.parametrize("mode", list(OPPOSITE), indirect=True)
def test_one_block_nests_in_itself_and_in_others(mode, request):
    make, read, inside, outside = mode
    opposite = OPPOSITE[request.node.callspec.params["mode"]]
    block = make()
    with block:
        with block:  # the same instance entered twice: a stack of saved values
            assert read() is inside
        assert read() is inside
        with make():
            assert read() is inside
        assert read() is inside
        if opposite is not None:
            with opposite():
                assert read() is outside
                with block:
                    assert read() is inside
                assert read() is outside
        assert read() is inside
    assert read() is outside


def test_grad_mode_and_anomaly_are_independent_flags():
    with tn.detect_anomaly():
        with tn.no_grad():
            assert _anomaly_on() and not tn.is_grad_enabled()
            with tn.enable_grad():
                assert tn.is_grad_enabled() and _anomaly_on()
        assert tn.is_grad_enabled() and _anomaly_on()
    with tn.no_grad():
        assert not _anomaly_on()
    x = tn.tensor([2.0], requires_grad=True)
    y = MakesNaN.apply(x)  # no check outside the block: nan flows freely
    with tn.detect_anomaly(), pytest.raises(RuntimeError, match=r"MakesNaN\.backward produced nan"):
        y.backward(tn.tensor([0.5]))


def _in_a_thread(read):
    """``read()`` called in a new thread, and its result."""
    found = []
    worker = threading.Thread(target=lambda: found.append(read()))
    worker.start()
    worker.join()
    return found[0]


def test_grad_mode_is_per_thread_and_anomaly_mode_per_process_as_in_pytorch():
    torch = pytest.importorskip("torch")
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    with tn.no_grad(), torch.no_grad():
        theirs = _in_a_thread(torch.is_grad_enabled)
        assert theirs is True
        # another thread's ops record their graph while this one is in no_grad
        assert _in_a_thread(lambda: (tn.is_grad_enabled(), (x * 2).grad_fn is not None)) == (
            theirs, True)
        with tn.enable_grad():
            with tn.set_grad_enabled(False):  # nor does a thread's switch reach the others
                assert _in_a_thread(tn.is_grad_enabled) is True
        assert not tn.is_grad_enabled()
        (x * 2).sum()
    with tn.detect_anomaly(), torch.autograd.set_detect_anomaly(True):
        theirs = _in_a_thread(torch.is_anomaly_enabled)
        assert theirs is True
        assert _in_a_thread(_anomaly_on) is theirs


@pytest.mark.parametrize("make, inside", [(tn.no_grad, False), (tn.enable_grad, True),
                                          (lambda: tn.set_grad_enabled(False), False)],
                         ids=["no_grad", "enable_grad", "set_grad_enabled(False)"])
def test_one_decorated_grad_mode_in_two_threads_at_once_restores_each_threads_mode(make, inside):
    """Both threads inside the same decorator instance, then the first leaves while the
    second is still in: each must get back its own mode (a stack shared by the threads would
    hand the first the second's saved value)."""
    both_in, first_out = threading.Barrier(2, timeout=10), threading.Event()
    seen = {}

    @make()
    def hold(name):
        both_in.wait()
        seen[name + " inside"] = tn.is_grad_enabled()
        if name == "second":
            assert first_out.wait(timeout=10)

    # each thread's own mode before the call, and the two differ: a stack shared by the
    # threads would give one thread the other's
    before = {"first": not inside, "second": inside}

    def run(name):
        tn.set_grad_enabled(before[name])
        hold(name)
        seen[name + " after"] = tn.is_grad_enabled()
        if name == "first":
            first_out.set()

    workers = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=20)
    assert seen == {"first inside": inside, "second inside": inside,
                    "first after": before["first"], "second after": before["second"]}
    assert tn.is_grad_enabled()


@pytest.mark.parametrize("device", [None, "cpu", "cpu:0"])
@pytest.mark.parametrize("dtype", [None, "float32", np.float32])
def test_as_tensor_shares_memory_when_dtype_and_device_already_match(device, dtype):
    """As torch.as_tensor: no copy when nothing changes, naming the array's own device or
    dtype included; a Tensor comes back as itself."""
    if device is None and backend.current() != "numpy":
        pytest.skip("device=None means the current backend, and NumPy data moves to it")
    a = np.arange(6, dtype=np.float32)
    t = tn.as_tensor(a, dtype=dtype, device=device)
    assert np.shares_memory(t.data, a)
    assert tn.as_tensor(t, dtype=dtype, device=device) is t


def test_as_tensor_copies_when_the_dtype_changes():
    a = np.arange(6, dtype=np.float32)
    t = tn.as_tensor(a, dtype=np.float64)
    assert t.dtype == np.float64 and not np.shares_memory(host(t), a)
    with pytest.raises(ValueError, match="tinynorm.as_tensor: unknown device 'gpu0'"):
        tn.as_tensor(a, device="gpu0")


def test_numpy_data_goes_to_the_current_backend_and_gpu_data_stays(emulated_gpu, monkeypatch):
    """As torch.tensor / torch.as_tensor under torch.set_default_device("cuda"): host data
    (a NumPy array, a list, a CPU Tensor's array) is built on the default device; a CUDA
    array (CuPy's, a GPU Tensor's) keeps its device unless one is named."""
    a = np.arange(4.0)
    monkeypatch.setattr(backend, "_current", "cupy")
    for made in (tn.tensor(a), tn.as_tensor(a), tn.tensor(a.tolist()), tn.tensor(tn.Tensor(a))):
        assert made.device == "cuda:0" and np.array_equal(np.asarray(made.data), a)
    assert tn.tensor(a, device="cpu").device == "cpu"
    assert np.shares_memory(tn.as_tensor(a, device="cpu").data, a)
    monkeypatch.setattr(backend, "_current", "numpy")
    gpu = on_gpu(a)
    assert tn.tensor(gpu).device == "cuda:0" and tn.as_tensor(gpu).data is gpu
    assert tn.tensor(a).device == "cpu" and tn.tensor(gpu, device="cpu").device == "cpu"


def test_backward_reads_data_onto_the_device_but_a_tensor_must_be_there(emulated_gpu):
    """A NumPy array or a list as backward's gradient is data, read onto the output's device
    (as tn.tensor would); a Tensor on another device is an error naming both."""
    x = tn.tensor([1.0, 2.0], device="cuda", requires_grad=True)
    for gradient in (np.array([3.0, -1.0]), [3.0, -1.0]):
        x.grad = None
        (x * x).backward(gradient)
        assert backend.device_of(x.grad) == "cuda:0" and host(x.grad).tolist() == [6.0, -4.0]
    with pytest.raises(TypeError, match=r"backward: inputs live on different devices: one on cpu"):
        (x * x).backward(tn.tensor([3.0, -1.0], device="cpu"))
    cpu = tn.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match=r"backward: inputs live on different devices"):
        (cpu * cpu).backward(on_gpu(np.array([3.0, -1.0])))
