import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (mockruns)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mock_run(tmp_path_factory):
    """A calibrated AGIPD-1M run (6 trains x 16 pulses) written by EXtra-data's mock writer, with
    sphere hits of moderate signal (1000 photons over 0.02 photons/pixel background) in known pulses."""
    from mockruns import write_mock_agipd_run

    run_dir = tmp_path_factory.mktemp("mockrun") / "r0042"
    truth = write_mock_agipd_run(run_dir, photons_per_hit=1000.0, hit_fraction=0.3, seed=1)
    return run_dir, truth


@pytest.fixture
def hitfinding_manifest(tmp_path):
    """The shipped spi-hitfinding manifest with the photon energy and distance the mock run was made with."""
    from mockruns import DISTANCE_M, PHOTON_ENERGY_EV

    text = (MANIFESTS / "spi-hitfinding.toml").read_text()
    text = text.replace("# photon_energy_eV = 6000.0", f"photon_energy_eV = {PHOTON_ENERGY_EV}")
    text = text.replace("# distance_m = 0.705", f"distance_m = {DISTANCE_M}")
    path = tmp_path / "spi-hitfinding.toml"
    path.write_text(text)
    return path


def run_cli(*args, env=None, cwd=None):
    """Run ``xfel-dl`` in a subprocess, as a user would; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "xfel_dl_plugins.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def validate_exdf(path) -> subprocess.CompletedProcess:
    exe = shutil.which("extra-data-validate", path=str(Path(sys.executable).parent)) or "extra-data-validate"
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)


def frame_keys(source_data) -> list[tuple[int, int]]:
    """(train_id, pulse_id) of every row of a results source (EXtra-data SourceData)."""
    first = source_data[sorted(source_data.keys())[0]]
    return list(zip(first.train_id_coordinates().tolist(), source_data["data.pulseId"].ndarray().tolist()))


def hit_f1(found: np.ndarray, actual: np.ndarray) -> float:
    tp, fp, fn = (found & actual).sum(), (found & ~actual).sum(), (~found & actual).sum()
    return 2 * tp / (2 * tp + fp + fn)
