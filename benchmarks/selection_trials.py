"""Start-selection trials (issue 4): many draws of the defaults, every start kept, rules replayed offline.

A selection rule decides which of a pattern's random starts leads the average. Judging a rule needs
many patterns, and phasing them is the cost; the starts' figures are cheap to keep. So:

  # PyNX's best start per test pattern (its default run, 10 starts; needs benchmarks/setup_pynx.sh)
  PYTHONPATH=$PWD python benchmarks/selection_trials.py pynx-best --size 128 --offset 1000 --out DIR
  # phase new draws with the defaults (SIZE:OBJECT_OFFSET:SEED, comma-separated), keep per start its
  # fits and the error of the average it would lead (a GPU makes this fast; --seconds stops early)
  PYTHONPATH=$PWD python benchmarks/selection_trials.py starts --plan 256:0:21,128:1000:21 --device cuda --out DIR/a.npz
  # the shipped rule against the earlier ones, at or below PyNX's best start; then where phase()'s
  # results miss: on patterns PyNX solved or not, and by how much of the object the beam stop hides
  PYTHONPATH=$PWD python benchmarks/selection_trials.py replay DIR/a.npz --pynx DIR

Objects: bench_phasing's test objects (polygon, blobs, complex_blobs, cell), object seeds + OFFSET,
128^2 at 1e6-1e9 photons, 256^2 at 1e7-1e8, beam stop size / 64 px. docs/benchmarks.md, "Quality: what
made the difference" (BIC), has the figures this gave on 2026-11-27.
"""

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from xfel_dl_plugins.phasing import metrics, phase
from xfel_dl_plugins.phasing.multistart import FREE_DEVIANCE_SCREEN, StartFits, align_on_lead, pairwise_differences

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phasing as bp  # noqa: E402

FIELDS = ("led", "cdev", "fdev", "ssize", "n_constrained")
N_KEEP, MAX_DIFFERENCE = 4, 0.15  # phase()'s defaults, which `starts` runs


def photon_levels(size: int) -> tuple:
    return (1e6, 1e7, 1e8, 1e9) if size == 128 else (1e7, 1e8)


def patterns(size: int, offset: int):
    _, iobs, valid, truths = bp.quality_cases(bp.QUALITY_KINDS, photon_levels(size), size, size / 64, object_offset=offset)
    return iobs, valid, np.stack(truths)


def start_figures(args) -> dict:
    """One pattern's starts: fits (as the selection sees them) and the error of the average each start
    would lead (:func:`align_on_lead` with its nearest starts, as ``combine_starts`` does)."""
    from threadpoolctl import threadpool_limits

    objects, supports, iobs, valid, free, truth = args
    with threadpool_limits(1, user_api="blas"):
        iobs = np.where(valid, iobs, 0).astype(np.float32)
        constrained = valid & ~free
        fts = np.stack([sfft.fftn(o.astype(np.complex128)) for o in objects])
        fits = StartFits.measure(fts, supports, iobs, constrained, free)
        dist = pairwise_differences(fts, np.arange(len(objects)))
        led = np.empty(len(objects))
        for lead in range(len(objects)):
            order = np.concatenate([[lead], [k for k in np.argsort(dist[lead], kind="stable") if k != lead]])
            _, aligned_fts, agree = align_on_lead(fts, order, N_KEEP, MAX_DIFFERENCE)  # as combine_starts averages
            led[lead] = metrics.ambiguity_error(truth, sfft.ifftn(aligned_fts[agree].mean(axis=0)).astype(np.complex64))
        return dict(led=led, cdev=fits.constrained_deviance, fdev=fits.free_deviance.sum(axis=1), ssize=fits.support_size,
                    n_constrained=fits.n_constrained)


def cmd_starts(args) -> None:
    t0, jobs, meta = time.perf_counter(), [], {"set": [], "pattern": [], "selected": []}
    for item in args.plan.split(","):
        if args.seconds and time.perf_counter() - t0 > args.seconds:
            print(f"time limit: stopped before {item}", flush=True)
            break
        size, offset, seed = (int(v) for v in item.split(":"))
        iobs, valid, truths = patterns(size, offset)
        r = phase(iobs, valid, n_starts=10, n_keep=N_KEEP, max_difference=MAX_DIFFERENCE, seed=seed,
                  device=args.device, keep_starts=True)
        for i in range(len(iobs)):
            jobs.append((r.start_objects[i], r.start_supports[i], iobs[i], valid[i], r.free_pixels[i], truths[i]))
            meta["set"].append(f"{size}_o{offset}_s{seed}")
            meta["pattern"].append(i)
            meta["selected"].append(metrics.ambiguity_error(truths[i], r.reconstruction[i]))
        print(f"phased {item} ({time.perf_counter() - t0:.0f} s)", flush=True)
    workers = len(os.sched_getaffinity(0))
    print(f"{len(jobs)} patterns: the starts' figures on {workers} processes", flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(start_figures, jobs, chunksize=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **{k: np.stack([r[k] for r in rows]) for k in FIELDS}, **{k: np.array(v) for k, v in meta.items()})
    print(f"wrote {args.out}")


def pynx_best_errors(pynx: "bp.PyNX", iobs, valid, truths) -> np.ndarray:
    """PyNX's default run (10 starts) on the patterns: per pattern its lowest error (failed starts: 1)."""
    objects = pynx.run("quality", iobs=iobs, valid=valid, n_starts=10, seed=1, sw_threshold=0.25,
                       sw_method="rms", sw_sigma=np.array((2.0, 0.5)))["objects"]
    return np.array([min(metrics.ambiguity_error(t, o) if np.abs(o).max() > 0 else 1.0 for o in starts)
                     for starts, t in zip(objects, truths)])


def cmd_pynx_best(args) -> None:
    iobs, valid, truths = patterns(args.size, args.offset)
    best = pynx_best_errors(bp.PyNX(args.pynx_dir), iobs, valid, truths)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / f"pynx_best_{args.size}_o{args.offset}.npy", best)
    print(args.size, args.offset, " ".join(f"{b:.3f}" for b in best))


def shipped(f: dict, i: int) -> int:
    """The package's rule (multistart.StartFits.lowest_bic) on the kept figures."""
    fits = StartFits(f["cdev"][i], f["fdev"][i][:, None], f["ssize"][i], int(f["n_constrained"][i]))
    return fits.lowest_bic(np.arange(len(f["cdev"][i])))


def screen_only(f: dict, i: int) -> int:
    """The rule before 2026-11-27 08:18: lowest BIC among the starts within the free-deviance screen."""
    fits = StartFits(f["cdev"][i], None, f["ssize"][i], int(f["n_constrained"][i]))
    return int(np.argmin(np.where(f["fdev"][i] <= FREE_DEVIANCE_SCREEN * f["fdev"][i].min(), fits.bic, np.inf)))


def no_screen(f: dict, i: int) -> int:
    return int(np.argmin(StartFits(f["cdev"][i], None, f["ssize"][i], int(f["n_constrained"][i])).bic))


RULES = {"shipped": shipped, "screen only (before)": screen_only, "no screen": no_screen}


def true_support_fractions(truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`~xfel_dl_plugins.phasing.metrics.missing_mode_fractions` of a test object's true
    support (above 1 % of its maximum): how much of each mode the unmeasured pixels hide."""
    return metrics.missing_mode_fractions(np.abs(truth) > 0.01 * np.abs(truth).max(), valid)


def hidden_fractions(size: int, offset: int) -> np.ndarray:
    """Per test pattern, the largest fraction of a mode's power that the beam stop hides."""
    _, valid, truths = patterns(size, offset)
    return np.array([true_support_fractions(t, v)[0] for t, v in zip(truths, valid)])


def print_breakdown(ours: np.ndarray, best: np.ndarray, sizes: np.ndarray, hidden: np.ndarray) -> None:
    """Where the selected result misses PyNX's best start: patterns PyNX solved or not (error 0.5),
    and how much of the object the beam stop hides."""
    for s in (256, 128):
        at = sizes == s
        if not at.any():
            continue
        solved = at & (best <= 0.5)
        print(f"  {s}^2: PyNX's best start <= 0.5 on {solved.sum()}, ours <= 0.5 on {(ours[solved] <= 0.5).sum()} of them "
              f"(at or below PyNX's best: {(ours[solved] <= best[solved] + 1e-9).sum()}); PyNX's best > 0.5 on "
              f"{(at & ~solved).sum()}, ours <= 0.5 on {(ours[at & ~solved] <= 0.5).sum()} of them")
        for lo, hi in ((0.0, 0.9), (0.9, 0.97), (0.97, 1.01)):
            band = at & (hidden >= lo) & (hidden < hi)
            if band.any():
                print(f"    a mode {lo:.2f}-{min(hi, 1):.2f} hidden: {band.sum()} patterns, at or below PyNX's best "
                      f"{(ours[band] <= best[band] + 1e-9).sum()}, both codes > 0.5 on {((ours[band] > 0.5) & (best[band] > 0.5)).sum()}")


def cmd_replay(args) -> None:
    hidden_by_set = {}
    for path in args.figures:
        f = dict(np.load(path))
        sizes = np.array([int(str(s).split("_")[0]) for s in f["set"]])
        best, hidden = np.empty(len(sizes)), np.empty(len(sizes))
        for i, (name, p) in enumerate(zip(f["set"], f["pattern"])):
            size, offset, _ = str(name).split("_")  # e.g. 128_o1000_s21
            best[i] = np.load(args.pynx / f"pynx_best_{size}_{offset}.npy")[p]
            if (size, offset) not in hidden_by_set:
                hidden_by_set[size, offset] = hidden_fractions(int(size), int(offset[1:]))
            hidden[i] = hidden_by_set[size, offset][p]
        print(f"{path}: {len(best)} patterns")
        rows = [("phase() as it ran", f["selected"]), ("oracle (best start leads)", f["led"].min(axis=1))]
        rows += [(name, np.array([f["led"][i, rule(f, i)] for i in range(len(best))])) for name, rule in RULES.items()]
        for name, led in rows:
            ok = led <= best + 1e-9
            print(f"  {name:26s}" + "  ".join(f"{s}^2 {int(ok[sizes == s].sum())} / {int((sizes == s).sum())}, "
                                               f"mean {led[sizes == s].mean():.3f}" for s in (256, 128) if (sizes == s).any()))
        print(" phase() as it ran, by pattern:")
        print_breakdown(f["selected"], best, sizes, hidden)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("starts")
    p.add_argument("--plan", required=True, help="SIZE:OBJECT_OFFSET:SEED,...")
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=0, help="stop phasing new sets after this long (0: never)")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("pynx-best")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--pynx-dir", type=Path, default=Path("/work/bench"))
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("replay")
    p.add_argument("figures", type=Path, nargs="+")
    p.add_argument("--pynx", type=Path, required=True, help="folder of pynx-best's files")
    args = ap.parse_args(argv)
    {"starts": cmd_starts, "pynx-best": cmd_pynx_best, "replay": cmd_replay}[args.command](args)


if __name__ == "__main__":
    main()
