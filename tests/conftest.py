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


def make_linear_wcs(c0=14.0, c1=-0.02):
    """A gwcs whose wavelength (its last output) is c0 + c1 * row, like an assign_wcs result."""
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs

    lam = models.Polynomial1D(1, c0=c0, c1=c1)
    forward = models.Mapping((0, 1, 1)) | (models.Identity(1) & models.Identity(1) & lam)
    frame = cf.CompositeFrame(
        [cf.Frame2D(name="pix", axes_order=(0, 1)),
         cf.SpectralFrame(name="spec", axes_order=(2,), unit=u.micron)],
        name="world",
    )
    return gwcs.WCS(forward_transform=forward, input_frame=cf.Frame2D(name="detector"), output_frame=frame)


@pytest.fixture
def linear_wcs():
    return make_linear_wcs()
