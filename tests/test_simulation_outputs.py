"""Configs, the CXI dataset writer, the AGIPD-1M run writer and simulate_main."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_dl_plugins.errors import OutputExistsError, XfelDLError
from xfel_dl_plugins.io.cxi import read_cxi
from xfel_dl_plugins.simulation import load_config
from xfel_dl_plugins.simulation.config import ConfigError, config_from_dict
from xfel_dl_plugins.simulation.writers import simulate_main, write_agipd_run

PACKAGED = ("pr772", "gold-nanoparticles", "mixed-contaminants", "demo-run")


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_configs_load(name):
    cfg = load_config(name)
    assert cfg.sample and cfg.name == name


@pytest.mark.parametrize("doc, key", [
    ({"beam": {"photon_energy_eV": -1.0}}, "beam.photon_energy_eV"),
    ({"beam": {"photon_energy_eV": "6 keV"}}, "beam.photon_energy_eV"),
    ({"detector": {"kind": "pnccd"}}, "detector.kind"),
    ({"detector": {"colour": 3}}, "detector.colour"),
    ({"sample": [{"name": "x", "shape": "torus"}]}, "sample[0].shape"),
    ({"sample": [{"name": "x", "material": "unobtainium"}]}, "sample[0].material"),
    ({"contaminants": [{"name": "x", "shape": "core_shell", "core_material": "kryptonite"}]}, "contaminants[0].core_material"),
    ({"output": {"frames_per_train": 1000}}, "output"),
    ({"hit_fractions": {"blank": 1.0, "double": 1.0}}, "hit_fractions"),
    ({"multiple_count": [1, 3]}, "multiple_count"),
    ({"same_species_fraction": 1.5}, "same_species_fraction"),
])
def test_config_errors_name_the_key(doc, key):
    with pytest.raises(XfelDLError, match=key.replace("[", r"\[").replace("]", r"\]")):
        cfg = config_from_dict(doc)
        from xfel_dl_plugins.simulation import generate

        generate(cfg, 1)


@pytest.mark.parametrize("same, mixed_expected", [(1.0, False), (0.0, True)])
def test_multiple_hits_species_mixing(same, mixed_expected):
    """same_species_fraction 1: every particle of a multiple hit is of the first one's species."""
    from xfel_dl_plugins.simulation.generate import Simulator

    species = [{"name": "a", "shape": "sphere", "radius_nm": 20.0}, {"name": "b", "shape": "sphere", "radius_nm": 40.0}]
    sim = Simulator(config_from_dict({"sample": species, "hit_fractions": {"multiple": 1.0}, "multiple_count": [3, 4],
                                      "same_species_fraction": same, "detector": {"shape": [16, 16]}}))
    rng = np.random.default_rng(0)
    scenes = [sim.draw_scene(rng)[1] for _ in range(40)]
    mixed = [len({p.species for p, _, _ in scene}) > 1 for scene in scenes]
    assert any(mixed) == mixed_expected


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_simulate_main_writes_a_labelled_cxi(tmp_path):
    toml = tmp_path / "small.toml"
    toml.write_text(Path(load_config.__code__.co_filename).with_name("configs").joinpath("pr772.toml").read_text()
                    .replace("n_patterns = 1000", "n_patterns = 12"))
    out = simulate_main(toml, tmp_path / "set.cxi", progress=False)
    data = read_cxi(out)
    try:
        assert data.patterns.shape == (12, 128, 128)
        assert data.photon_energy_eV == pytest.approx(6000.0)
        assert data.distance_m == pytest.approx(0.705) and data.pixel_size_m == pytest.approx(0.8e-3)
        frames, valid = data.read(0, 12)
        assert 0.6 < valid.mean() < 0.95
        sample = data.file["entry_1/sample_1"]
        for key in ("hit_class", "radius_nm", "shape", "orientation", "photons", "projected_density"):
            assert len(sample[key]) == 12
        assert sample["projected_density"].shape == (12, 128, 128)
    finally:
        data.close()
    with pytest.raises(OutputExistsError):
        simulate_main(toml, tmp_path / "set.cxi", progress=False)


def test_agipd_run_opens_with_extra_data_and_validates(tmp_path):
    import extra_data
    from extra_data.components import AGIPD1M

    cfg = load_config("demo-run")
    run_dir = write_agipd_run(tmp_path / "r0001", cfg, n_trains=2, frames_per_train=3, seed=7,
                              progress=False, workers=1)
    run = extra_data.RunDirectory(run_dir)
    det = AGIPD1M(run, raw=False)
    data = det["image.data"].ndarray()
    assert data.shape == (16, 6, 512, 128) and data.dtype == np.float32
    mask = det["image.mask"].ndarray()
    assert mask.dtype == np.uint32 and 0 < (mask != 0).mean() < 0.02
    truth = run["SPB_XFELDL_SIM/TRUTH/SAMPLE:output", "data.hitClass"]
    assert truth.ndarray().shape == (6,)
    np.testing.assert_array_equal(truth.train_id_coordinates(), det["image.data"].train_id_coordinates())
    assert run.get_run_value("SPB_XFELDL_SIM/MDL/SETTINGS", "photonEnergy") == pytest.approx(6000.0)
    # photons in the frame match the truth within Poisson and readout noise
    photons = run["SPB_XFELDL_SIM/TRUTH/SAMPLE:output", "data.photons"].ndarray()
    background = run["SPB_XFELDL_SIM/TRUTH/SAMPLE:output", "data.backgroundPhotons"].ndarray()
    good = mask == 0
    counted = np.where(good, data, 0).sum(axis=(0, 2, 3))
    expected = photons + background
    assert np.all(np.abs(counted - expected) < 6 * np.sqrt(expected + 0.15**2 * good.sum() / 6))
    result = subprocess.run([str(Path(sys.executable).with_name("extra-data-validate")), str(run_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    with h5py.File(run_dir / "CORR-R0001-AGIPD05-S00000.h5") as f:
        assert f["INSTRUMENT/SPB_DET_AGIPD1M-1/CORR/5CH0:output/image/gain"].dtype == np.uint8


def test_user_supplied_density_map(tmp_path):
    """A map file (electrons/A^3) goes through the 3D-map path with the sphere's absolute scale."""
    from xfel_dl_plugins.physics import density as dens
    from xfel_dl_plugins.physics.formfactors import sphere_amplitude
    from xfel_dl_plugins.simulation import Simulator
    from xfel_dl_plugins.simulation.config import config_from_dict

    voxel_nm, radius = 1.0, 20e-9
    values = dens.sphere_map(radius, 0.5e30, voxel_nm * 1e-9).values / 1e30  # electrons/A^3
    np.save(tmp_path / "blob.npy", values.astype(np.float32))
    cfg = config_from_dict({"sample": [{"name": "blob", "shape": "map", "map_file": str(tmp_path / "blob.npy"),
                                        "map_voxel_nm": voxel_nm}], "hit_fractions": {"single": 1.0},
                            "contaminants": []})
    sim = Simulator(cfg)
    particle = sim.samplers[id(cfg.sample[0])].draw(np.random.default_rng(0))
    assert particle.radius_m == pytest.approx(radius, rel=0.01)
    got = particle.amplitude(sim.q) ** 2
    exact = sphere_amplitude(sim.q_abs, radius, 0.5e30) ** 2
    assert np.abs(got - exact).sum() / exact.sum() < 0.02
    with pytest.raises(XfelDLError, match="not found"):
        Simulator(config_from_dict({"sample": [{"name": "x", "shape": "map", "map_file": "/nonexistent.npy",
                                                "map_voxel_nm": 1.0}]}))
