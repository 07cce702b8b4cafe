"""The PyTorch (GPU) path computes the same expected intensities as the NumPy path."""

import dataclasses

import numpy as np
import pytest

from xfel_dl_plugins.simulation import Simulator, generate, load_config

torch = pytest.importorskip("torch")


def compare(cfg, device, scenes=8, use_map=False):
    a = Simulator(cfg)
    b = Simulator(cfg, device=device)
    a.use_map = b.use_map = use_map
    checked = 0
    for i in range(40):
        _, scene, _ = a.draw_scene(np.random.default_rng(i))
        if not scene:
            continue
        expected = a.intensity(scene, a.mean_pulse_photons)
        got = b.backend.intensity(scene, a.mean_pulse_photons).cpu().numpy()
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * expected.max())
        checked += 1
        if checked == scenes:
            break
    assert checked == scenes


def test_torch_matches_numpy_on_all_particle_kinds():
    compare(load_config("mixed-contaminants"), "torch-cpu")
    compare(load_config("gold-nanoparticles"), "torch-cpu")


def test_torch_matches_numpy_through_the_map_path_and_agipd_blocks():
    cfg = load_config("pr772")
    compare(cfg, "torch-cpu", scenes=2, use_map=True)
    agipd = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, kind="agipd1m"))
    compare(agipd, "torch-cpu", scenes=1)


def test_torch_generate_is_deterministic_and_counts_photons():
    cfg = load_config("pr772")
    a = generate(cfg, 6, seed=2, device="torch-cpu")
    b = generate(cfg, 6, seed=2, device="torch-cpu")
    np.testing.assert_array_equal(a.patterns, b.patterns)
    ref = generate(cfg, 6, seed=2)
    np.testing.assert_array_equal(a.hit_class, ref.hit_class)
    np.testing.assert_allclose(a.photons, ref.photons, rtol=1e-4)
    i = int(np.argmax(a.photons))
    counted = a.patterns[i][a.valid[i]].sum()
    expected = a.photons[i] + a.background_photons[i]
    assert abs(counted - expected) < 6 * np.sqrt(expected + 0.15**2 * 16 * a.valid[i].sum())


@pytest.mark.gpu
def test_cuda_generate():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = load_config("pr772")
    compare(cfg, "cuda", scenes=3)
    out = generate(cfg, 32, seed=0, device="cuda")
    assert out.patterns.shape == (32, 128, 128)
