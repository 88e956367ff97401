"""Hypothesis profiles for the fuzz suite: "ci" (default, bounded: the whole directory in well under 30 s)
and "long" (HYPOTHESIS_PROFILE=long: 50x the examples, see tests/fuzz/strategies.py: examples)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "ci")
