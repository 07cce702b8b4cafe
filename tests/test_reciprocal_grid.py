"""reciprocal_grid: binning onto the beam-centred grid, and zeros that cannot be measurements."""

import numpy as np

from xfel_dl_plugins.io.geometry import ExperimentGeometry
from xfel_dl_plugins.io.grid import unmeasured_zeros
from xfel_dl_plugins.phasing.testobjects import diffraction, make_object
from xfel_dl_plugins.stages.base import FrameBatch
from xfel_dl_plugins.stages.preprocessing import ReciprocalGrid

SIZE = 64


def _bright_pattern(photons):
    """A beam-centred pattern whose beam stop (radius 2 px) reads 0 but is not masked."""
    obj = make_object((SIZE, SIZE), "polygon", rng=np.random.default_rng(0))
    counts, _, _ = diffraction(obj, photons, None, np.random.default_rng(1))
    counts = np.fft.fftshift(counts)
    yy, xx = np.indices(counts.shape) - SIZE // 2
    stop = np.hypot(yy, xx) <= 2
    counts[stop] = 0
    return counts, stop


def test_unmasked_beam_stop_zeros_are_found_and_nothing_else():
    counts, stop = _bright_pattern(1e8)
    valid = np.ones(counts.shape, bool)
    dead = (40, 20)
    counts[dead] = 0.0  # a dead pixel in a bright ring
    noisy = counts + np.where(stop, np.random.default_rng(2).normal(0, 0.3, counts.shape), 0)  # calibrated noise
    found = unmeasured_zeros(noisy[None], valid[None])[0]
    assert found[stop].all() and found[dead]
    assert found.sum() == stop.sum() + 1
    # pixels already masked are not reported, and faint patterns keep their zeros as measurements
    assert not unmeasured_zeros(counts[None], ~stop[None])[0][stop].any()
    faint, _ = _bright_pattern(1e4)
    assert (faint < 1).sum() > 1000 and not unmeasured_zeros(faint[None], valid[None]).any()


def test_stage_sets_them_unmeasured_and_counts_them():
    counts, stop = _bright_pattern(1e8)
    geometry = ExperimentGeometry.flat((SIZE, SIZE), pixel_size_m=2e-4, photon_energy_eV=6000, distance_m=0.7,
                                       beam_centre=(SIZE // 2, SIZE // 2))
    fields = {"data": counts[None].astype(np.float32), "valid": np.ones((1, SIZE, SIZE), bool)}
    outputs = {}
    for threshold in (1000.0, 0.0):
        stage = ReciprocalGrid(size=SIZE, binning=1, zero_ring_photons=threshold)
        stage.context.geometry = geometry
        stage.setup()
        outputs[threshold] = stage.process(FrameBatch(dict(fields), geometry, {}))
    assert outputs[1000.0]["zeros_unmeasured"][0] == stop.sum()
    assert not outputs[1000.0]["pattern_valid"][0][stop].any() and outputs[1000.0]["pattern_valid"][0].sum() == SIZE ** 2 - stop.sum()
    assert outputs[0.0]["zeros_unmeasured"][0] == 0 and outputs[0.0]["pattern_valid"].all()
    assert stage.warnings() == []  # threshold 0: nothing set unmeasured


def test_run_warns_about_unmasked_zeros_and_unphased_frames(tmp_path):
    """`xfel-dl run` on a CXI file without a mask: the run finishes, prints one warning line per
    problem on stderr and keeps the warnings in the results file."""
    import json
    import re

    import extra_data
    from conftest import run_cli

    from xfel_dl_plugins.io.cxi import write_cxi

    counts, stop = _bright_pattern(1e8)
    patterns = np.stack([counts, counts, np.zeros_like(counts)]).astype(np.float32)  # the last is blank
    cxi = write_cxi(tmp_path / "p.cxi", patterns, distance_m=0.7, pixel_size_m=2e-4, photon_energy_eV=6000)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f"""[chain]\nname = "w"\ndevice = "cpu"\n[input]\ncxi = "p.cxi"\n
[[stages]]\nuse = "reciprocal_grid"\n[stages.params]\nsize = {SIZE}\nbinning = 1\n
[[stages]]\nuse = "phase_retriever"\nlabel = "phasing"\n[stages.params]\nsize = {SIZE}\nn_starts = 4\nn_keep = 2
recipe = "(SW*HIO**10)**2 * ER**10"\n""")
    proc = run_cli("run", manifest, "--input", cxi, "--output", tmp_path / "r.h5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("xfel-dl: warning: ")]
    grid_lines = [w for w in warnings if w.startswith("xfel-dl: warning: reciprocal_grid: ")]
    phasing_lines = [w.split("phasing: ", 1)[1] for w in warnings if w.startswith("xfel-dl: warning: phasing: ")]
    assert len(grid_lines) == 1 and len(grid_lines) + len(phasing_lines) == len(warnings), proc.stderr
    assert f"2 of 3 frames had zero-photon pixels among bright ones ({2 * stop.sum()} in all)" in grid_lines[0]
    assert phasing_lines[-1].startswith("1 frames not phased")  # the blank one
    run = extra_data.H5File(tmp_path / "r.h5")
    phasing = [s for s in run.control_sources if s.endswith("/PHASING")][0]
    assert json.loads(run.get_run_value(phasing, "warnings")) == phasing_lines
    # the report of a phasing-only file: reconstructions, PRTF curves, the warnings
    proc = run_cli("report", tmp_path / "r.h5", "--out-dir", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    assert "frames phased: 2 of 3; with a resolution: 2" in proc.stdout
    counts = re.search(r"reproduced by 2 or more independent starts: (\d+); by a single start .*: (\d+)", proc.stdout)
    assert counts and int(counts[1]) + int(counts[2]) == 2, proc.stdout
    kinds = re.search(r"phased as real, non-negative densities: (\d+); as complex objects: (\d+)", proc.stdout)
    assert kinds and int(kinds[1]) + int(kinds[2]) == 2, proc.stdout  # positivity = "auto", the default
    assert "- phasing: 1 frames not phased" in proc.stdout and "- reciprocal_grid: 2 of 3 frames" in proc.stdout
    assert "phasing.png" in proc.stdout and "Warning" not in proc.stderr
    assert (tmp_path / "report" / "phasing.png").stat().st_size > 20_000
    assert not (tmp_path / "report" / "report.png").exists()  # no hit finder in this chain
