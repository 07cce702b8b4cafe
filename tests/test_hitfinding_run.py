"""End to end: a mock run written by EXtra-data's writer -> spi-hitfinding -> results file."""

import numpy as np
from conftest import frame_keys, hit_f1, run_cli, validate_exdf


def run_edited_manifest(tmp_path, manifest, name, source, input_path, *edits):
    """Run the hit-finding manifest with its ``detector = "AGIPD1M"`` line replaced by ``source``
    (and further (old, new) text ``edits``); returns (completed process, output file)."""
    text = manifest.read_text().replace('detector = "AGIPD1M"', source)
    for old, new in edits:
        text = text.replace(old, new)
    edited = tmp_path / f"{name}.toml"
    edited.write_text(text)
    out = tmp_path / f"{name}-hits.h5"
    return run_cli("run", edited, "--input", input_path, "--output", out, "--quiet"), out


def test_spi_hitfinding_on_mock_run(mock_run, hitfinding_manifest, tmp_path):
    import extra_data

    run_dir, truth = mock_run
    out = tmp_path / "hits.h5"
    proc = run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "frames/s" in proc.stdout

    results = extra_data.H5File(str(out))
    hits = results["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output"]
    keys = frame_keys(hits)
    # One row per input frame, in the input's train/pulse order.
    assert keys == list(truth)
    assert list(results.train_ids) == sorted({t for t, _ in truth})

    found = hits["data.is_hit"].ndarray()
    actual = np.array([truth[k] > 0 for k in keys])
    assert hit_f1(found, actual) >= 0.95

    # Later stages saw only the hits; the size fit finds the simulated radii.
    size = results["SPB_DET_AGIPD1M-1/XFELDL/SIZE:output"]
    assert size["data.radius_nm"].shape[0] == found.sum()
    sized = frame_keys(size)
    fitted = size["data.radius_nm"].ndarray()
    true_r = np.array([truth[key] for key in sized])
    ok = true_r > 0
    assert np.median(np.abs(fitted[ok] / true_r[ok] - 1)) < 0.05

    # Provenance and validation.
    assert "spi-hitfinding" in results.get_run_value("XFELDL/PROVENANCE", "manifest")
    assert results.get_run_value("SPB_DET_AGIPD1M-1/XFELDL/HITFINDER", "hits") == found.sum()
    check = validate_exdf(out)
    assert check.returncode == 0 and "No problems found" in check.stdout, check.stdout


def test_cxi_input_runs_through_the_same_chain(tmp_path):
    """A CXI file is a second source: frames are flat, one per pseudo-train."""
    import extra_data

    from xfel_dl_plugins.io.cxi import write_cxi

    rng = np.random.default_rng(0)
    frames = rng.poisson(0.05, size=(12, 64, 64)).astype(np.float32)
    frames[::3, 24:40, 24:40] += rng.poisson(5.0, size=(4, 16, 16))
    cxi = write_cxi(tmp_path / "p.cxi", frames, distance_m=0.7, pixel_size_m=2e-4, photon_energy_eV=6000)
    manifest = tmp_path / "m.toml"
    manifest.write_text('[input]\ncxi = "ignored.cxi"\n[[stages]]\nuse = "litpixel_hitfinder"\n'
                        '[stages.params]\nk_sigma = 5.0\n[output]\nfile = "x.h5"\n')
    out = tmp_path / "r.h5"
    proc = run_cli("run", manifest, "--input", cxi, "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    hits = extra_data.H5File(str(out))["XFELDL/XFELDL/LITPIXEL_HITFINDER:output", "data.is_hit"].ndarray()
    assert hits.tolist() == [i % 3 == 0 for i in range(12)]


def test_raw_run_with_dark_from_the_run(tmp_path, hitfinding_manifest):
    """Raw AGIPD-1M data: analog ADU minus a per-cell dark estimated from the run, in photons."""
    import extra_data
    from mockruns import write_mock_agipd_run

    run_dir = tmp_path / "raw" / "r0042"
    truth = write_mock_agipd_run(run_dir, photons_per_hit=1000.0, hit_fraction=0.3, seed=2, raw=True,
                                 adu_per_photon=40.0)
    proc, out = run_edited_manifest(tmp_path, hitfinding_manifest, "raw",
                                    'detector = "AGIPD1M"\nraw = true\nphotons_per_adu = 0.025', run_dir)
    assert proc.returncode == 0, proc.stderr
    hits = extra_data.H5File(str(out))["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output"]
    actual = np.array([truth[k] > 0 for k in frame_keys(hits)])
    assert hit_f1(hits["data.is_hit"].ndarray(), actual) >= 0.95


def test_damnit_style_processing_of_an_open_run(mock_run, tmp_path, monkeypatch):
    """DAMNIT passes an open DataCollection; the shipped manifest runs on it by name."""
    import extra_data

    from xfel_dl_plugins.integrations.damnit import process_run, results_path

    monkeypatch.setenv("XFEL_DL_RESULTS", str(tmp_path))
    run = extra_data.RunDirectory(str(mock_run[0]))
    out = results_path(700000, 42, "spi-hitfinding")
    manifest = tmp_path / "m.toml"  # the shipped manifest plus the mock run's geometry
    from conftest import MANIFESTS

    manifest.write_text((MANIFESTS / "spi-hitfinding.toml").read_text()
                        .replace("# photon_energy_eV = 6000.0", "photon_energy_eV = 6000.0")
                        .replace("# distance_m = 0.705", "distance_m = 0.705"))
    result = process_run(run, manifest, out)
    assert out.is_file() and result.n_frames == 96
    assert extra_data.H5File(str(out)).get_run_value("SPB_DET_AGIPD1M-1/XFELDL/HITFINDER", "hits") > 0


def _replay_on_bridge(run_dir, endpoint):
    """Send a calibrated run train by train on a loopback karabo-bridge, modules appended into
    (frames, 16, 512, 128) as the online calibration pipeline and karabo-bridge-serve-files do."""
    import extra_data
    from extra_data.stacking import stack_detector_data
    from karabo_bridge import ServerInThread

    server = ServerInThread(endpoint, sock="REP", maxlen=2)
    server.start()
    run = extra_data.RunDirectory(str(run_dir))
    for tid, train in run.trains():
        first = next(v for k, v in train.items() if "/CORR/" in k)
        appended = {
            "image.data": stack_detector_data(train, "image.data", pattern=r"/CORR/(\d+)CH"),
            "image.mask": stack_detector_data(train, "image.mask", pattern=r"/CORR/(\d+)CH"),
            "image.pulseId": first["image.pulseId"], "image.cellId": first["image.cellId"],
        }
        meta = {"source": "SPB_DET_AGIPD1M-1/DET/APPEND", "timestamp.tid": tid}
        server.feed({"SPB_DET_AGIPD1M-1/DET/APPEND": appended}, {"SPB_DET_AGIPD1M-1/DET/APPEND": meta})
    return server


def test_online_karabo_bridge_stream_gives_the_offline_results(mock_run, hitfinding_manifest, tmp_path):
    """Process a karabo-bridge stream (loopback): the same frames get the same hit decisions as offline."""
    import socket
    import threading

    import extra_data

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    run_dir, truth = mock_run
    feeder = threading.Thread(target=_replay_on_bridge, args=(run_dir, endpoint), daemon=True)
    feeder.start()
    proc, out = run_edited_manifest(tmp_path, hitfinding_manifest, "online",
                                    'detector = "AGIPD1M"\nmax_trains = 6\ntimeout_s = 20.0', endpoint)
    assert proc.returncode == 0, proc.stderr

    online = extra_data.H5File(str(out))["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output"]
    assert frame_keys(online) == list(truth)
    found = online["data.is_hit"].ndarray()
    actual = np.array([truth[k] > 0 for k in truth])
    assert (found == actual).mean() >= 0.95


def test_parts_in_parallel_through_dask_open_as_one_run(mock_run, hitfinding_manifest, tmp_path):
    import extra_data

    run_dir, truth = mock_run
    proc = run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", tmp_path / "hits.h5",
                   "--parts", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "hits"
    assert sorted(p.name for p in folder.iterdir()) == [f"hits-S{i:05d}.h5" for i in range(3)]
    combined = extra_data.RunDirectory(str(folder))["SPB_DET_AGIPD1M-1/XFELDL/HITFINDER:output"]
    assert frame_keys(combined) == list(truth)


def test_report_command_makes_figures(mock_run, hitfinding_manifest, tmp_path):
    run_dir, _ = mock_run
    out = tmp_path / "hits.h5"
    assert run_cli("run", hitfinding_manifest, "--input", run_dir, "--output", out, "--quiet").returncode == 0
    proc = run_cli("report", out, "--run", run_dir, "--out-dir", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    assert "hits:" in proc.stdout
    png = tmp_path / "report" / "report.png"
    assert png.stat().st_size > 20_000  # four plots and example hits, not an empty canvas


def test_jungfrau_run(tmp_path, hitfinding_manifest):
    """Calibrated JUNGFRAU-4M: memory cells become frames; four of eight modules present."""
    import extra_data
    from mockruns import write_mock_jungfrau_run

    run_dir = tmp_path / "r0012"
    truth = write_mock_jungfrau_run(run_dir, seed=3)
    proc, out = run_edited_manifest(tmp_path, hitfinding_manifest, "jf", 'detector = "JUNGFRAU4M"', run_dir,
                                    ("batch_size = 32", "batch_size = 16"))
    assert proc.returncode == 0, proc.stderr
    results = extra_data.H5File(str(out))
    hits = results["SPB_IRDA_JF4M/XFELDL/HITFINDER:output"]
    keys = frame_keys(hits)
    assert keys == list(truth)
    assert hits["data.cellId"].ndarray()[:3].tolist() == [15, 14, 13]
    actual = np.array([truth[k] > 0 for k in keys])
    found = hits["data.is_hit"].ndarray()
    assert hit_f1(found, actual) >= 0.95
    sizes = results["SPB_IRDA_JF4M/XFELDL/SIZE:output", "data.radius_nm"].ndarray()
    assert np.median(np.abs(sizes / 35.0 - 1)) < 0.2
