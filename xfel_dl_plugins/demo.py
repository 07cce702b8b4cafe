"""``xfel-dl demo``: simulate a small calibrated AGIPD-1M run (once), run spi-hitfinding on it, report;
then phase its single hits with spi-phasing and report the images."""

from __future__ import annotations

import importlib.util
import shutil
import time
from importlib import resources
from pathlib import Path

from .errors import XfelDLError

DEMO_CONFIG = "demo-run.toml"
DEMO_MANIFEST = "spi-hitfinding.toml"
PHASING_MANIFEST = "spi-phasing.toml"  # hit finder -> single-hit classifier -> phase retrieval
RUN_NAME = "r0001"
COMPLETE_MARKER = ".complete"  # written last: a run without it is rebuilt


def packaged_manifest(name: str) -> Path:
    path = Path(str(resources.files("xfel_dl_plugins") / "manifests" / name))
    if not path.is_file():
        raise XfelDLError(f"packaged manifest {name} not found (broken installation?)")
    return path


def build_demo_run(run_dir: Path, *, progress: bool = True, n_frames: int | None = None) -> None:
    """Simulate the demo run into ``run_dir`` (via a temporary directory, renamed when complete);
    ``n_frames`` overrides the config's size (a quick look, or the tests)."""
    from .simulation.writers import simulate_main

    config = Path(str(resources.files("xfel_dl_plugins.simulation") / "configs" / DEMO_CONFIG))
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    simulate_main(config, partial, progress=progress, n=n_frames)
    (partial / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    shutil.rmtree(run_dir, ignore_errors=True)
    partial.rename(run_dir)


def read_truth(run_dir: Path):
    """The per-pulse truth the simulator stores beside the run (None if there is none)."""
    import extra_data

    from .report import Truth

    run = extra_data.RunDirectory(str(run_dir))
    source = next((s for s in sorted(run.instrument_sources) if "TRUTH" in s), None)
    if source is None:
        return None
    sd = run[source]
    tids = sd["data.hitClass"].train_id_coordinates().tolist()
    pids = sd["data.pulseId"].ndarray().tolist()
    keys = list(zip(tids, pids))
    classes = sd["data.hitClass"].ndarray().tolist()
    radii = sd["data.radiusNm"].ndarray().tolist()
    return Truth(dict(zip(keys, (int(c) for c in classes))), dict(zip(keys, (float(r) for r in radii))))


def run_demo(workdir: Path, *, progress: bool = True, rebuild: bool = False, n_frames: int | None = None,
             phasing: bool = True) -> Path:
    """Build the demo run if needed, run the hit-finding chain and write its report; with ``phasing``,
    also phase the single hits (``phased.h5``, report in ``phasing/``); return the first report's path."""
    from .pipeline.manifest import apply_overrides, parse_manifest
    from .pipeline.runner import run_chain
    from .report import make_report, print_report

    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / RUN_NAME
    if rebuild or not (run_dir / COMPLETE_MARKER).is_file():
        print(f"simulating the demo run into {run_dir} (once) ...", flush=True)
        t0 = time.perf_counter()
        build_demo_run(run_dir, progress=progress, n_frames=n_frames)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    manifest = apply_overrides(parse_manifest(packaged_manifest(DEMO_MANIFEST)), input_path=str(run_dir),
                               output=str(workdir / "results.h5"))
    print(f"running {manifest.path.name} on {run_dir} ...", flush=True)
    result = run_chain(manifest, overwrite=True, progress=progress)
    truth = read_truth(run_dir)
    report = make_report(result.output, workdir, run_dir=run_dir, truth=truth, geometry=result.geometry)
    print()
    print(f"results: {result.output}  ({result.n_frames} frames, {result.frames_per_s:.1f} frames/s)")
    print_report(report)
    if phasing and importlib.util.find_spec("torch") is None:
        print("\nsingle hits not phased: spi-phasing's classifier needs PyTorch (pip install torch==2.13.0)")
    elif phasing:
        manifest = apply_overrides(parse_manifest(packaged_manifest(PHASING_MANIFEST)), input_path=str(run_dir),
                                   output=str(workdir / "phased.h5"))
        print(f"\nrunning {manifest.path.name} on {run_dir} (single hits -> images) ...", flush=True)
        phased = run_chain(manifest, overwrite=True, progress=progress)
        print(f"\nresults: {phased.output}  ({phased.n_frames} frames, {phased.frames_per_s:.1f} frames/s)")
        print_report(make_report(phased.output, workdir / "phasing", truth=truth))  # its warnings included
    return report

