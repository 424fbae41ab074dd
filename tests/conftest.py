"""Shared test setup: Hypothesis profiles, the --backend option, the gpu marker, and the CI rule
that a missing test dependency fails instead of skipping.

CI is recognised by ``CI=true`` (GitHub Actions and most services) or by
``HYPOTHESIS_PROFILE=ci`` (what .ci/run exports).
"""
import importlib
import os

import pytest

import tinynorm as tn

IN_CI = (os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
         or os.environ.get("HYPOTHESIS_PROFILE", "").strip() == "ci")
# each with the extra that installs it; numba (the compiled CPU kernels) is the `cpu` extra
TEST_DEPENDENCIES = {"torch": "test", "hypothesis": "test", "numba": "cpu"}

if IN_CI:  # no test may skip in CI: a missing dependency stops the run here, by name
    for _name, _extra in TEST_DEPENDENCIES.items():
        try:
            importlib.import_module(_name)
        except ImportError as err:
            raise RuntimeError(
                f"CI run without {_name!r} ({err}): install the {_extra!r} extra, as CI does "
                f"with pip install -e '.[cpu,test,demos]'. Outside CI the tests needing it "
                f"would skip."
            ) from None

try:
    from tinynorm.testing import register_profiles

    HYPOTHESIS_PROFILE = register_profiles()
except ImportError:  # outside CI only: tests using hypothesis importorskip it
    HYPOTHESIS_PROFILE = None


def pytest_addoption(parser):
    parser.addoption("--backend", choices=tn.backend.BACKENDS,
                     default=os.environ.get("TINYNORM_BACKEND", "").strip().lower() or "numpy",
                     help="array backend the tests run on (default: $TINYNORM_BACKEND or numpy)")


def pytest_configure(config):
    name = config.getoption("--backend")
    try:
        tn.backend.use(name)
    except RuntimeError as err:
        raise pytest.UsageError(f"--backend {name}: {err}") from None


def pytest_report_header(config):
    return (f"tinynorm backend: {tn.backend.current()}; hypothesis profile: {HYPOTHESIS_PROFILE}; "
            f"CI: {IN_CI}")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not tn.backend.gpu_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy "
                                       "(tinynorm.backend.gpu_available() "
                                       "is False); install with pip install 'tinynorm[gpu]'")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def on_cpu():
    """New tensors on the CPU for the test, under --backend cupy too: for tests of the
    compiled CPU kernels and of CPU-only behaviour (threads, memory counts)."""
    with tn.backend.use("numpy"):
        yield
