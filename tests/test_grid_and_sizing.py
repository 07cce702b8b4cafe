import numpy as np
import pytest

from xfel_dl_plugins.io.geometry import ExperimentGeometry, q_from_radius
from xfel_dl_plugins.io.grid import bin_to_grid
from xfel_dl_plugins.stages.base import FrameBatch, StageContext
from xfel_dl_plugins.stages.preprocessing import ReciprocalGrid
from xfel_dl_plugins.stages.sizing import SphereSizeFit, sphere_form_factor


@pytest.mark.parametrize("binning", [1, 2, 3, 4])
def test_binning_puts_beam_centre_in_the_middle_and_keeps_photons(binning):
    img = np.zeros((1, 101, 97), np.float32)
    img[0, 50, 40] = 5.0
    pattern, valid = bin_to_grid(img, np.ones(img.shape, bool), (50, 40), 16, binning)
    assert pattern.shape == (1, 16, 16) and valid.all()
    assert pattern[0, 8, 8] == pytest.approx(5.0)
    assert pattern.sum() == pytest.approx(5.0)


def test_partially_masked_blocks_are_rescaled_and_mostly_masked_blocks_invalid():
    img = np.ones((1, 8, 8), np.float32)
    valid = np.ones(img.shape, bool)
    valid[0, :2, :1] = False  # 2 of 4 pixels in block (0,0) masked -> still valid, rescaled
    valid[0, 2:4, 0:2] = False  # block (1,0) fully masked
    pattern, pvalid = bin_to_grid(img, valid, (4, 4), 4, 2)
    assert pvalid[0, 0, 0] and pattern[0, 0, 0] == pytest.approx(4.0)
    assert not pvalid[0, 1, 0] and pattern[0, 1, 0] == 0


def test_q_from_radius_matches_bragg_geometry():
    # 6 keV, 0.7 m, 0.1 m off axis: q = 4 pi sin(atan(r/L)/2) / lambda
    lam = 4.135667696e-15 * 299792458.0 / 6000  # h c / E
    expected = 4 * np.pi * np.sin(np.arctan(0.1 / 0.7) / 2) / lam
    assert q_from_radius(0.1, 0.7, 6000) == pytest.approx(expected, rel=1e-12)


def test_sphere_form_factor_minima():
    for x0 in (4.4934, 7.7253, 10.9041):
        x = np.linspace(x0 - 0.05, x0 + 0.05, 1001)
        assert x[np.argmin(sphere_form_factor(x))] == pytest.approx(x0, abs=2e-4)


def test_size_fit_recovers_radius_of_noisy_spheres_behind_a_beam_stop():
    rng = np.random.default_rng(3)
    geom = ExperimentGeometry.flat((512, 512), pixel_size_m=2e-4, photon_energy_eV=6000, distance_m=0.7)
    ctx = StageContext(geometry=geom)
    grid = ReciprocalGrid(ctx, size=256, binning=2)
    grid.setup()
    fit = SphereSizeFit(ctx)
    fit.setup()
    yy, xx = np.indices((512, 512))
    q = q_from_radius(np.hypot(yy - 255.5, xx - 255.5) * 2e-4, 0.7, 6000)
    radii = np.array([18.0, 25.0, 35.0, 50.0, 70.0])
    frames = np.stack([rng.poisson(20 * (r / 30) ** 6 * sphere_form_factor(q * r * 1e-9) + 0.01) for r in radii])
    valid = np.ones(frames.shape, bool)
    valid[:, 244:268, 244:268] = False  # beam stop, 2.4 mm half-width
    batch = FrameBatch({"data": frames.astype(np.float32), "valid": valid, "train_id": np.arange(len(radii))}, geom)
    batch.fields.update(grid.process(batch))
    out = fit.process(batch)
    np.testing.assert_allclose(out["radius_nm"], radii, rtol=0.05)
    assert np.all(out["fit_quality"] > 0.8)
