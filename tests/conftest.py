"""Shared fixtures: small simulated observations, generated on the fly and cached per session."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

import exomiri
from exomiri import plugins


@pytest.fixture(scope="session")
def small_obs():
    """40 integrations, default scene, seed 1."""
    return exomiri.simulate(nints=40, seed=1)


@pytest.fixture(scope="session")
def segmented_obs():
    """30 integrations meant to be written as 3 segments."""
    return exomiri.simulate(nints=30, seed=2, segments=3)


@pytest.fixture
def fresh_plugins():
    """Reload the plugin manager before and after a test that changes what is installed."""
    plugins.reset()
    yield
    plugins.reset()
