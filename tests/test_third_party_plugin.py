"""A third-party stage package, pip-installed, is discovered through its entry point and runs in a chain."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import run_cli

PLUGIN = Path(__file__).parent / "plugin_example"


def test_installed_plugin_runs_inside_a_chain(tmp_path):
    import extra_data

    from xfel_dl_plugins.io.cxi import write_cxi

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    listing = run_cli("stages", env=env)
    assert "saturation_veto  [hit_finder]" in listing.stdout

    frames = np.random.default_rng(0).poisson(0.1, (10, 32, 32)).astype(np.float32)
    frames[[2, 7], :4, :4] = 5000.0  # 16 saturated pixels in frames 2 and 7
    frames[:, 10:20, 10:20] += 3.0  # every frame is a hit
    cxi = write_cxi(tmp_path / "p.cxi", frames, distance_m=0.7, pixel_size_m=2e-4, photon_energy_eV=6000)
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[[stages]]\nuse = "saturation_veto"\nlabel = "veto"\nfilter = true\n[stages.params]\nlevel = 4000.0\n'
        '[[stages]]\nuse = "litpixel_hitfinder"\nlabel = "hits"\n[stages.params]\nfixed_threshold = 50\n')
    out = tmp_path / "r.h5"
    proc = run_cli("run", manifest, "--input", cxi, "--output", out, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    results = extra_data.H5File(str(out))
    veto = results["XFELDL/XFELDL/VETO:output", "data.n_saturated"].ndarray()
    assert veto.tolist() == [16 if i in (2, 7) else 0 for i in range(10)]
    hits = results["XFELDL/XFELDL/HITS:output", "data.is_hit"]
    assert hits.train_id_coordinates().tolist() == [i + 1 for i in range(10) if i not in (2, 7)]
    stages = results.get_run_value("XFELDL/PROVENANCE", "stages")
    assert '"saturation_veto"' in stages
