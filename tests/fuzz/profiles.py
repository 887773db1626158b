"""Hypothesis profiles for the fuzz tests.

``ci`` (the default) keeps every fuzz test to a few seconds; ``long`` is for a run by hand:
``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_fuzz_*.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=_QUIET, derandomize=False
)
settings.register_profile("long", max_examples=5_000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(ci: int) -> int:
    """Examples for one test: ``ci`` under the CI profile, the profile's own count otherwise."""
    profile = settings.get_current_profile_name()
    return ci if profile == "ci" else settings().max_examples
