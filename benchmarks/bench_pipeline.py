"""Frames/s of the host: reading + assembling + hit finding, next to plain EXtra-data reading.

Usage:  python benchmarks/bench_pipeline.py [--run RUN_DIR] [--trains 10] [--frames-per-train 32]

Without --run, a calibrated AGIPD-1M run is made with EXtra-data's mock writer (tests/mockruns.py).
Every variant reads the same frames in the same batches, in the same process, one after the other
(each twice; the best time is kept, so the page cache is warm for all of them alike).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def plain_extra_data(run_dir: Path, batch: int) -> int:
    """The baseline: EXtra-data reading image.data and image.mask of every frame, batch by batch."""
    import extra_data
    from extra_data.components import AGIPD1M

    det = AGIPD1M(extra_data.RunDirectory(str(run_dir)), raw=False, min_modules=1)
    n = 0
    for part in det.split_trains(frames_per_part=batch):
        data = part["image.data"].ndarray(module_gaps=True, fill_value=np.nan)
        part["image.mask"].ndarray(module_gaps=True)
        n += data.shape[1]
    return n


def chain(run_dir: Path, stages: str, workdir: Path, batch: int) -> int:
    from xfel_dl_plugins.pipeline.manifest import parse_manifest
    from xfel_dl_plugins.pipeline.runner import run_chain

    path = workdir / "bench.toml"
    path.write_text(f'[chain]\nbatch_size = {batch}\ndevice = "cpu"\n[input]\nrun = "{run_dir}"\n'
                    f'[geometry]\nphoton_energy_eV = 6000.0\ndistance_m = 0.705\n{stages}\n'
                    f'[output]\nfile = "{workdir / "out.h5"}"\n')
    return run_chain(parse_manifest(path), overwrite=True, progress=False).n_frames


HITFINDER = '[[stages]]\nuse = "litpixel_hitfinder"\n[stages.params]\nmax_radius_mm = 50.0\n'
ASSEMBLE = '[[stages]]\nuse = "reciprocal_grid"\n[stages.params]\nsize = 256\nbinning = 2\n'
FILTERED = ('[[stages]]\nuse = "litpixel_hitfinder"\nfilter = true\n[stages.params]\nmax_radius_mm = 50.0\n'
            + ASSEMBLE + '[[stages]]\nuse = "sphere_sizer"\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path)
    ap.add_argument("--trains", type=int, default=10)
    ap.add_argument("--frames-per-train", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = args.run
        if run_dir is None:
            from mockruns import write_mock_agipd_run

            run_dir = tmp / "r0042"
            write_mock_agipd_run(run_dir, n_trains=args.trains, frames_per_train=args.frames_per_train,
                                 hit_fraction=0.1, photons_per_hit=2000.0)
        variants = {
            "EXtra-data: read data + mask (baseline)": lambda: plain_extra_data(run_dir, args.batch),
            "xfel-dl: read + hit finding": lambda: chain(run_dir, HITFINDER, tmp, args.batch),
            "xfel-dl: read + assemble every frame + hit finding": lambda: chain(run_dir, HITFINDER + ASSEMBLE, tmp, args.batch),
            "xfel-dl: spi-hitfinding chain (hits assembled + sized)": lambda: chain(run_dir, FILTERED, tmp, args.batch),
        }
        rates = {}
        for name, fn in variants.items():
            best = np.inf
            for _ in range(2):
                t0 = time.perf_counter()
                n = fn()
                best = min(best, time.perf_counter() - t0)
            rates[name] = n / best
            print(f"{name:58s} {n:5d} frames  {rates[name]:8.1f} frames/s", flush=True)
        base = rates["EXtra-data: read data + mask (baseline)"]
        print("\n| variant | frames/s | ratio to plain EXtra-data reading |\n|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
