"""Training: writes loadable, calibrated weights with a model card, bit-for-bit reproducibly from the seed."""

import numpy as np
import pytest

from _synthetic_frames import synthetic_frames
from xfel_dl_plugins.errors import XfelDLError

pytest.importorskip("torch")

CONFIG = """
[model]
name = "tiny_{type}"
type = "{type}"
layers = [[8, 2], [16, 2], [16, 2]]
hidden = 16
rings = 8
embedding_dim = 8
[grid]
size = 64
binning = 4
pixel_size_m = 200e-6
distance_m = 0.705
photon_energy_eV = 6000.0
[data]
n_train = 256
n_val = 128
seed = 3
simulation = {{}}
[train]
seed = 7
epochs = 1
batch_size = 64
learning_rate = 3e-3
"""


@pytest.fixture
def synthetic_simulation(monkeypatch):
    from xfel_dl_plugins.classification import training
    from xfel_dl_plugins.classification.data import FrameSet

    def fake(config, n, seed, grid, use_cache=True, simulator=None, log=None):
        patterns, valid, labels = synthetic_frames(n, seed)
        groups = np.where(np.arange(n) % 2, "small", "large")
        return FrameSet(patterns, valid, labels, groups, np.full(n, np.nan, np.float32))

    monkeypatch.setattr(training, "simulated_frames", fake)
    return training


@pytest.mark.parametrize("kind,options", [("classifier", ""), ("embedding", ""),
                                          ("classifier", "channels_last = true\nbrightness_balance = true\n"
                                                         "[augment]\np_photonize = 0.5\np_extra_mask = 0.5\n")])
def test_training_is_reproducible_and_loadable(tmp_path, synthetic_simulation, kind, options):
    from xfel_dl_plugins.classification.runtime import ClassifierModel, EncoderModel

    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG.format(type=kind) + options)
    silent = lambda *a: None  # noqa: E731
    first = synthetic_simulation.train_from_config(cfg, tmp_path / "a", log=silent)
    synthetic_simulation.train_from_config(cfg, tmp_path / "b", log=silent)
    name = f"tiny_{kind}"
    a, b = (tmp_path / d / f"{name}.safetensors" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    card = (tmp_path / "a" / f"{name}.md").read_text()
    assert "seed 7" in card and "Reproduce" in card
    model = (ClassifierModel if kind == "classifier" else EncoderModel)(path=a)
    patterns, valid, _ = synthetic_frames(5, 9)
    if kind == "classifier":
        assert first["calibration"]["temperature"] > 0
        assert model.predict(patterns, valid)["probabilities"].shape == (5, 4)
    else:
        emb = model.embed(patterns, valid)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_bad_training_config(tmp_path):
    from xfel_dl_plugins.classification.training import load_config

    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[model]\ntype = 'svm'\n[grid]\n[data]\n[train]\n")
    with pytest.raises(XfelDLError, match="type must be"):
        load_config(cfg)
    with pytest.raises(XfelDLError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_simulated_frames_do_not_depend_on_chunking(monkeypatch):
    """Native-pixel training frames are simulated and binned chunk by chunk; the frames are the same."""
    from xfel_dl_plugins.classification import data

    config = {"detector": {"pixel_size_m": 200e-6, "binning": 1, "shape": [64, 64]}}
    grid = {"size": 16, "binning": 2}
    whole = data.simulated_frames(config, 12, 5, grid, use_cache=False)
    monkeypatch.setattr(data, "SIMULATION_CHUNK", 5)
    chunked = data.simulated_frames(config, 12, 5, grid, use_cache=False)
    assert whole.patterns.shape == (12, 16, 16)
    for name in ("patterns", "valid", "labels", "groups", "radius_nm"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))


def test_brightness_balancing_gives_singles_and_multiples_one_photon_count_distribution():
    from xfel_dl_plugins.classification.data import FrameSet
    from xfel_dl_plugins.classification.training import brightness_balancing_weights

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], [200, 2000, 1500, 200])
    photons = np.exp(rng.normal(np.where(labels == 2, 8.5, 7.5), 0.8))  # multiples brighter
    patterns = np.zeros((len(labels), 4, 4), np.float32)
    patterns[:, 1, 1] = photons
    patterns[:, 0, 0] = 1e6  # an invalid pixel: not counted
    valid = np.ones_like(patterns, bool)
    valid[:, 0, 0] = False
    frames = FrameSet(patterns, valid, labels, np.full(len(labels), "x"), np.zeros(len(labels), np.float32))
    w = brightness_balancing_weights(frames)
    assert np.all(w[(labels == 0) | (labels == 3)] == 1)
    single, multiple = labels == 1, labels == 2
    log_p = np.log(photons)

    def weighted_mean(m):
        return np.sum(w[m] * log_p[m]) / np.sum(w[m])

    assert abs(log_p[multiple].mean() - log_p[single].mean()) > 0.9  # a strong cue without the weights
    assert abs(weighted_mean(multiple) - weighted_mean(single)) < 0.15  # nearly none with them
    assert np.all((w >= 0.1) & (w <= 10))
