"""Tools for testing ops, tinynorm's own and yours.

* ``gradcheck(fn, inputs)`` — a backward against central finite differences in float64;
* ``assert_close(actual, expected)`` — PyTorch's per-dtype tolerances, messages that name the
  worst element;
* ``tinynorm.testing.strategies`` — Hypothesis strategies for well-conditioned inputs
  (needs ``hypothesis``; import it explicitly);
* ``register_profiles()`` — Hypothesis profiles "dev", "ci" and "thorough".
"""
from .compare import assert_close
from .gradient_check import GradcheckError, gradcheck
from .profiles import register_profiles

__all__ = ["GradcheckError", "assert_close", "gradcheck", "register_profiles"]
