"""Simulation speed: patterns/s at 256x256 (analytic spheres, icosahedra exact and through the 3D-map
path) on 1 and 2 CPU processes, the AGIPD-1M demo run, and the library building blocks against the
obvious baselines (per-pixel Poisson draws, scipy's map_coordinates), all in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_simulate.py [--quick] [--output section.md]  (the "Simulation" section of docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shutil
import tempfile
import time

import numpy as np

from xfel_dl_plugins.physics import density as dens
from xfel_dl_plugins.simulation import generate, grid_detector, load_config, write_agipd_run
from xfel_dl_plugins.simulation.config import Range, SimulationConfig, SpeciesConfig
from xfel_dl_plugins.simulation.effects import poisson_counts


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of worker processes it joined)."""
    def cpu():
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu() - c0


def config_for(shape: str, method: str = "analytic") -> SimulationConfig:
    species = SpeciesConfig("bench", shape, Range(33.0, 1.5, 26.0, 42.0), "virus", method=method)
    return SimulationConfig(sample=[species], hit_fractions={"single": 1.0}, contaminants=[])


def bench_patterns(n: int, rows: list) -> None:
    det = grid_detector((256, 256), 0.8e-3, 0.705)
    quadratic = dataclasses.replace(config_for("icosahedron", "map"), map_interpolation="quadratic")
    for label, cfg, use_map in (("analytic sphere", config_for("sphere"), False),
                                ("icosahedron, exact analytic", config_for("icosahedron"), False),
                                ("icosahedron, 3D-map path (cubic)", config_for("icosahedron", "map"), True),
                                ("icosahedron, 3D-map path (quadratic)", quadratic, True)):
        generate(cfg, 2, seed=0, detector=det, use_map=use_map)  # build caches (3D FFT) outside the timing
        for workers in (1, 2):
            count = n if workers == 1 else 2 * n
            wall, cpu = cpu_timed(lambda: generate(cfg, count, seed=1, detector=det, use_map=use_map, workers=workers))
            rows.append((f"{label}, {workers} process{'es' if workers > 1 else ''}",
                         f"{count / wall:.0f} patterns/s wall; {count / cpu:.0f} patterns/s per CPU-second",
                         f"{cpu / count * 1e3:.1f} CPU-ms/pattern -> {2 * count / cpu:.0f}/s on 2 free cores"))


def bench_blocks(rows: list) -> None:
    rng = np.random.default_rng(0)
    sparse = rng.exponential(0.002, 1 << 20)
    sparse[:5000] = rng.exponential(20, 5000)  # a speckled hit on a megapixel frame
    t_new = timed(lambda: poisson_counts(rng, sparse), 5)
    t_old = timed(lambda: rng.poisson(sparse), 5)
    rows.append(("Poisson counts, 1 Mpixel frame: Poisson-process sampler vs rng.poisson per pixel",
                 f"{t_new * 1e3:.1f} ms vs {t_old * 1e3:.1f} ms", f"x{t_old / t_new:.1f}"))
    # 3D-map path: B-spline orders on the 2x padded transform of a voxelised sphere vs the exact sphere
    from xfel_dl_plugins.physics.formfactors import sphere_amplitude
    from xfel_dl_plugins.physics.geometry import flat_detector_positions, scattering_geometry

    geom = scattering_geometry(flat_detector_positions((256, 256), 0.8e-3, 0.705), 6000.0, 0.8e-3**2)
    voxel = 0.9 * np.pi / geom.q_abs.max()
    exact = sphere_amplitude(geom.q_abs, 33e-9, 4.4e29) ** 2
    q = geom.q.astype(np.float32)
    for interp in ("cubic", "quadratic", "linear"):
        build = time.perf_counter()
        fmap = dens.FourierMap(dens.sphere_map(33e-9, 4.4e29, voxel), 2, interp)
        build = time.perf_counter() - build
        wall, cpu = cpu_timed(lambda: [fmap.amplitude(q) for _ in range(5)])
        err = np.abs(fmap.amplitude(q) ** 2 - exact).sum() / exact.sum()
        rows.append((f"3D-map path, {interp} interpolation, 65,536 q (grid {fmap.size}^3, built in {build:.1f} s)",
                     f"{cpu / 5 * 1e3:.1f} CPU-ms", f"intensity error sum|dI|/sum I = {err:.1%}"))


def bench_agipd(rows: list, n_trains: int) -> None:
    cfg = load_config("demo-run")
    for workers in (1, 2):
        tmp = tempfile.mkdtemp(prefix="bench_agipd_")
        try:
            wall, cpu = cpu_timed(lambda: write_agipd_run(tmp, cfg, n_trains, 32, seed=1, progress=False,
                                                          workers=workers, overwrite=True))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append((f"AGIPD-1M demo run, {n_trains} trains x 32 frames, {workers} process{'es' if workers > 1 else ''}",
                     f"{wall:.1f} s wall, {cpu:.1f} CPU-s", f"{n_trains * 32 / wall:.1f} frames/s wall"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer patterns (a smoke run)")
    ap.add_argument("--output", default=None, help="write the markdown section here")
    args = ap.parse_args()
    n = 40 if args.quick else 200
    rows: list[tuple[str, str, str]] = []
    load = os.getloadavg()[0]
    bench_blocks(rows)
    bench_patterns(n, rows)
    bench_agipd(rows, 2 if args.quick else 10)
    load_end = os.getloadavg()[0]
    lines = [
        "## Simulation",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_simulate.py{' --quick' if args.quick else ''}` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the "
        f"start and {load_end:.1f} at the end. The machine is shared with other jobs, so wall-clock rates are "
        "pessimistic; CPU seconds (this process plus its workers, from getrusage) are the load-independent "
        "measure, and '/s on 2 free cores' is twice the per-CPU-second rate. 256 x 256 grid of 0.8 mm pixels at 0.705 m, 6 keV, "
        "every pattern a single PR772-sized particle (R = 33 nm), full pipeline: amplitudes, polarisation and "
        "solid angle, gas and stray background, Poisson counting, readout noise, AGIPD gaps.",
        "",
        "| what | result | per item / ratio |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "No GPU was available here: the PyTorch device path (`generate(..., device=\"cuda\")`) is tested against "
        "NumPy with PyTorch on the CPU only.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
