"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing half-written."""

import shutil

import pytest
from conftest import run_cli


def assert_clean_failure(proc, *fragments, out_dir=None):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # progress bars go to stderr only when running; one line here
    assert lines[0].startswith("xfel-dl: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if out_dir is not None:
        leftovers = [p.name for p in out_dir.iterdir() if p.suffix in (".h5", ".part")]
        assert leftovers == [], leftovers


def write_manifest(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    return path


GOOD_STAGE = '[[stages]]\nuse = "litpixel_hitfinder"\n'


def test_missing_run_directory(hitfinding_manifest, tmp_path):
    proc = run_cli("run", hitfinding_manifest, "--input", tmp_path / "r9999", "--output", tmp_path / "o.h5")
    assert_clean_failure(proc, "run directory not found", "r9999", out_dir=tmp_path)


def test_run_without_the_detector(hitfinding_manifest, tmp_path):
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.xgm import XGM

    run_dir = tmp_path / "r0001"
    run_dir.mkdir()
    write_file(str(run_dir / "RAW-R0001-DA01-S00000.h5"), [XGM("SA1_XTD2_XGM/DOOCS/MAIN")], ntrains=5,
               format_version="1.0")
    proc = run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", tmp_path / "o.h5")
    assert_clean_failure(proc, "has no", "AGIPD1M", out_dir=tmp_path)


def test_truncated_hdf5_file(mock_run, hitfinding_manifest, tmp_path):
    run_dir = tmp_path / "r0042"
    shutil.copytree(mock_run[0], run_dir)
    victim = run_dir / "CORR-R0042-AGIPD03-S00000.h5"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    proc = run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", tmp_path / "o.h5", "--quiet")
    assert_clean_failure(proc, out_dir=tmp_path)
    assert "AGIPD03" in proc.stderr or "truncated" in proc.stderr or "corrupt" in proc.stderr


def test_corrupt_cxi_file(tmp_path):
    bad = tmp_path / "p.cxi"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    manifest = write_manifest(tmp_path, GOOD_STAGE)
    proc = run_cli("run", manifest, "--input", bad, "--output", tmp_path / "o.h5")
    assert_clean_failure(proc, "p.cxi", "corrupt", out_dir=tmp_path)


@pytest.mark.parametrize("layout, fragments", [
    ("group", ["/entry_1/data_1/data is a group"]),
    ("vector", ["/entry_1/data_1/data has shape (5,)", "expected patterns (n, H, W)"]),
    ("mask", ["mask shape (3, 3) does not match patterns (2, 8, 8)"]),
])
def test_cxi_file_with_the_wrong_layout(tmp_path, layout, fragments):
    import h5py
    import numpy as np

    path = tmp_path / "p.cxi"
    with h5py.File(path, "w") as fh:
        if layout == "group":
            fh.create_group("entry_1/data_1/data")
        elif layout == "vector":
            fh["entry_1/data_1/data"] = np.ones(5)
        else:
            fh["entry_1/data_1/data"] = np.ones((2, 8, 8))
            fh["entry_1/instrument_1/detector_1/mask"] = np.zeros((3, 3))
    proc = run_cli("run", write_manifest(tmp_path, GOOD_STAGE), "--input", path, "--output", tmp_path / "o.h5")
    assert_clean_failure(proc, "p.cxi", *fragments, out_dir=tmp_path)


@pytest.mark.parametrize("body, fragments", [
    ('[[stages]]\nuse = "no_such_stage"\n', ["unknown stage 'no_such_stage'", "stages[0]"]),
    (GOOD_STAGE + '[stages.params]\nk_sigm = 3.0\n', ["unknown parameter 'k_sigm'"]),
    (GOOD_STAGE + '[stages.params]\nk_sigma = "four"\n', ["'k_sigma' must be a number"]),
    ('[chain]\ndevice = "tpu"\n' + GOOD_STAGE, ["[chain.device]", "one of ['cpu', 'cuda', 'auto']"]),
    ('[chain]\nbatch_sise = 3\n' + GOOD_STAGE, ["[chain.batch_sise]", "no key"]),
    ('[[stages]]\nuse = "sphere_sizer"\n', ["needs per-frame field 'pattern'"]),
    ('[[stages]]\nuse = "reciprocal_grid"\nfilter = true\n', ["cannot filter"]),
    ("[[stages]\nuse = 1\n", ["not valid TOML"]),
])
def test_invalid_manifests_name_file_key_and_expectation(mock_run, tmp_path, body, fragments):
    manifest = write_manifest(tmp_path, '[geometry]\nphoton_energy_eV = 6000.0\ndistance_m = 0.7\n' + body
                              if body.startswith("[[") else body)
    proc = run_cli("run", manifest, "--input", mock_run[0], "--output", tmp_path / "o.h5")
    assert_clean_failure(proc, "bad.toml" if "needs per-frame" not in fragments[0] else "", *fragments,
                         out_dir=tmp_path)


def test_missing_manifest(tmp_path):
    assert_clean_failure(run_cli("run", tmp_path / "nope.toml"), "manifest not found")


def test_existing_output_is_refused_without_overwrite(mock_run, hitfinding_manifest, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious results")
    proc = run_cli("run", hitfinding_manifest, "--input", mock_run[0], "--output", out)
    assert_clean_failure(proc, "output file exists", "--overwrite")
    assert out.read_bytes() == b"precious results"


def test_nan_frames(tmp_path, hitfinding_manifest):
    from mockruns import write_mock_agipd_run

    run_dir = tmp_path / "r0043"
    write_mock_agipd_run(run_dir, n_trains=2, frames_per_train=8, nan_frame=(1, 3), seed=5)
    out = tmp_path / "o.h5"
    proc = run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", out, "--quiet")
    assert_clean_failure(proc, "no valid pixel", "train 10001 pulse 3", out_dir=tmp_path)

    skipping = tmp_path / "skip.toml"
    skipping.write_text(hitfinding_manifest.read_text().replace('on_invalid_frame = "error"', 'on_invalid_frame = "skip"'))
    proc = run_cli("run", skipping, "--input", run_dir, "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    import extra_data

    rows = extra_data.H5File(str(out))["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output", "data.is_hit"]
    assert rows.shape[0] == 15
    assert extra_data.H5File(str(out)).get_run_value("XFELDL/PROVENANCE", "framesSkippedInvalid") == 1
