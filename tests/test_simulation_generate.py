"""generate(): shapes, labels, determinism, realistic photon counts."""

import numpy as np
import pytest

from xfel_dl_plugins.simulation import SHAPE_NAMES, SimulationConfig, generate, grid_detector


@pytest.fixture(scope="module")
def patterns():
    return generate(SimulationConfig(), 60, seed=3, projected_density=True)


def test_arrays_and_labels(patterns):
    n = len(patterns)
    assert patterns.patterns.shape == (n, 128, 128) and patterns.patterns.dtype == np.float32
    assert patterns.valid.shape == patterns.patterns.shape and patterns.valid.dtype == bool
    assert set(np.unique(patterns.hit_class)) <= {0, 1, 2, 3}
    assert patterns.orientation.shape == (n, 4)
    np.testing.assert_allclose(np.linalg.norm(patterns.orientation, axis=1), 1, rtol=1e-5)
    blank = patterns.hit_class == 0
    assert np.all(patterns.photons[blank] == 0) and np.all(patterns.radius_nm[blank] == 0)
    single = patterns.hit_class == 1
    assert np.all(np.array(SHAPE_NAMES)[patterns.shape[single]] == "icosahedron")
    assert np.all((patterns.radius_nm[single] > 20) & (patterns.radius_nm[single] < 50))
    assert np.all(patterns.n_particles[patterns.hit_class == 2] >= 2)
    # masked pixels (AGIPD gaps, beam stop) carry no signal
    never_valid = ~patterns.valid.any(axis=0)
    assert never_valid.mean() > 0.05  # gaps and central hole of the binned AGIPD-1M
    assert np.all(patterns.patterns[:, never_valid] == 0)


def test_photon_counts_are_realistic(patterns):
    single = patterns.photons[patterns.hit_class == 1]
    assert 300 < np.median(single) < 3e4  # PR772 hits at SPB: ~1e3 (weak hits down to a few 100)
    # the counted photons equal the expected ones within Poisson + readout noise
    i = int(np.flatnonzero(patterns.hit_class == 1)[0])
    counted = patterns.patterns[i][patterns.valid[i]].sum()
    expected = patterns.photons[i] + patterns.background_photons[i]
    assert abs(counted - expected) < 6 * np.sqrt(expected + 0.15**2 * 16 * patterns.valid[i].sum())


def test_deterministic_and_batch_independent(patterns):
    again = generate(SimulationConfig(), 5, seed=3, start=10)
    np.testing.assert_array_equal(again.patterns, patterns.patterns[10:15])
    np.testing.assert_array_equal(again.hit_class, patterns.hit_class[10:15])
    other = generate(SimulationConfig(), 5, seed=4, start=10)
    assert not np.array_equal(other.patterns, again.patterns)


def test_projected_density_holds_the_particle_electrons(patterns):
    i = int(np.flatnonzero(patterns.hit_class == 1)[0])
    wavelength, distance, pixel = patterns.meta["wavelength_m"], patterns.meta["distance_m"], patterns.meta["pixel_size_m"]
    dx_nm = wavelength * distance / (128 * pixel) * 1e9
    electrons = patterns.projected_density[i].sum() * dx_nm**2
    r = patterns.radius_nm[i] * 1e-9
    expected = 0.44e30 * 4 / 3 * np.pi * r**3
    assert electrons == pytest.approx(expected, rel=0.02)


def test_custom_grid_detector():
    det = grid_detector((64, 96), 1.6e-3, 0.705, mask="none")
    out = generate(SimulationConfig(), 3, seed=0, detector=det)
    assert out.patterns.shape == (3, 64, 96)


def test_block_evaluation_on_agipd_matches_full_evaluation():
    """Amplitudes evaluated on 2x2 pixel blocks and upsampled per tile equal the per-pixel ones."""
    import dataclasses

    from xfel_dl_plugins.simulation import Simulator, load_config

    cfg = load_config("pr772")
    sim = Simulator(dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, kind="agipd1m")))
    particle = sim.samplers[id(cfg.sample[0])].draw(np.random.default_rng(0))
    assert sim._factor(particle.extent_m) == 2
    blocks = sim.particle_amplitude(particle) ** 2
    full = particle.amplitude(sim.q, sim.q_abs) ** 2
    qr = sim.q_abs * particle.radius_m
    for lo, hi in ((3, 10), (10, 30), (30, 120)):
        shell = sim.valid & (qr >= lo) & (qr < hi)
        assert np.abs(blocks[shell] - full[shell]).sum() / full[shell].sum() < 0.01
