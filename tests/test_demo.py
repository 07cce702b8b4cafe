"""The demo end to end, on a smaller simulated run (the README's demo simulates 320 frames)."""

from conftest import run_cli, validate_exdf


def test_demo_simulates_runs_and_reports(tmp_path):
    import extra_data

    workdir = tmp_path / "demo"
    proc = run_cli("demo", "--workdir", workdir, "--frames", 64, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "F1 (against the simulation's truth)" in proc.stdout
    results = workdir / "results.h5"
    hits = extra_data.H5File(str(results))["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output", "data.is_hit"]
    assert hits.shape == (64,)
    assert validate_exdf(results).returncode == 0
    assert (workdir / "report.png").stat().st_size > 20_000
    # then the single hits are phased: images and PRTFs in phasing/
    phased = extra_data.H5File(str(workdir / "phased.h5"))
    singles = phased["SPB_DET_AGIPD1M-1/XFELDL/CLASSIFIER:output", "data.is_single"].ndarray().sum()
    assert singles >= 1 and phased["SPB_DET_AGIPD1M-1/XFELDL/PHASING:output", "data.amplitude"].shape[0] == singles
    assert "## Phase retrieval" in proc.stdout and (workdir / "phasing" / "phasing.png").stat().st_size > 20_000
    # A second call reuses the simulated run.
    again = run_cli("demo", "--workdir", workdir, "--quiet", "--no-phasing")
    assert again.returncode == 0 and "simulating" not in again.stdout
