"""Hypothesis profiles for tinynorm's tests (and yours).

* ``dev``      — fast local runs: 10 examples, no deadline (timings on a busy laptop vary);
* ``ci``       — reproducible: derandomized, no example database, 25 examples, and the
                 reproduction blob printed on failure;
* ``thorough`` — 300 examples, for a nightly or a pre-release run.

``HYPOTHESIS_PROFILE`` chooses one (default ``dev``).
"""
from __future__ import annotations

import os

PROFILES = ("dev", "ci", "thorough")


def register_profiles(default: str = "dev") -> str:
    """Register the profiles and load the one named by ``HYPOTHESIS_PROFILE`` (or ``default``).

    Returns the name of the loaded profile.
    """
    from hypothesis import settings  # imported here: hypothesis is a test dependency only

    settings.register_profile("dev", max_examples=10, deadline=None)
    settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None,
                              database=None, print_blob=True)
    settings.register_profile("thorough", max_examples=300, deadline=None)
    name = os.environ.get("HYPOTHESIS_PROFILE", "").strip() or default
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}; expected one of {PROFILES}")
    settings.load_profile(name)
    return name
