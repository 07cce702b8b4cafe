"""positivity="auto" against a complex-object run (issue 4): per test pattern, at or below PyNX's best start?

  # PyNX's best start per test set first (selection_trials.py pynx-best, once per size and object offset), then
  PYTHONPATH=$PWD python benchmarks/auto_positivity.py --plan 128:0:602,256:1000:602 --pynx DIR --out DIR/602.json
  # --starts 20: 10 complex + 10 positive starts for "auto" (the complex run keeps --complex-starts, 10)
  # --runs auto_at_end,auto: each run with its own starts to the end against the shipped default
  #   (positivity_choice="guide": a run that leads decisively at the GUIDE takes every start)

Objects, sizes and photon levels as in selection_trials.py (polygon, blobs, cell: real and non-negative;
complex_blobs: complex). Prints per set the count at or below PyNX's best, the mean error, how many
patterns the data phased as positive, and the patterns either run misses; then totals by size.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from xfel_dl_plugins.phasing import metrics, phase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phasing as bp  # noqa: E402
import selection_trials as st  # noqa: E402

#: The runs to compare: every start complex; positivity = "auto" as shipped (since 2026-11-27 20:10 UTC the
#: GUIDE gives a decisive run's kind every start, "auto_at_guide"; before, each run kept its own, "auto_at_end").
RUNS = {"complex": dict(positivity=False), "auto": dict(positivity="auto"),
        "auto_at_guide": dict(positivity="auto", positivity_choice="guide"),
        "auto_at_end": dict(positivity="auto", positivity_choice="end")}


def kind_of(size: int, index: int) -> str:
    return bp.QUALITY_KINDS[index // len(st.photon_levels(size))]


def phase_set(size: int, offset: int, seed: int, starts: dict) -> dict:
    iobs, valid, truths = st.patterns(size, offset)
    out = {}
    for run, n_starts in starts.items():
        t0 = time.perf_counter()
        r = phase(iobs, valid, n_starts=n_starts, n_keep=st.N_KEEP, seed=seed, device="cpu", **RUNS[run])
        out[run] = dict(err=[float(metrics.ambiguity_error(t, rec)) for t, rec in zip(truths, r.reconstruction)],
                        positive=r.positivity.tolist(), seconds=time.perf_counter() - t0)
    return out


def report(sets: dict, pynx: Path, compared: list) -> None:
    totals = {}
    for name, runs in sets.items():
        size, offset, _ = name.split("_")
        present = [run for run in compared if run in runs]
        best = np.load(pynx / f"pynx_best_{size}_{offset}.npy")
        err = {run: np.array(runs[run]["err"]) for run in present}
        ok = {run: err[run] <= best + 1e-9 for run in present}
        print(f"{name}: at or below PyNX's best " + ", ".join(f"{run} {ok[run].sum()}" for run in present)
              + f" of {len(best)}; mean error " + " -> ".join(f"{err[run].mean():.3f}" for run in present)
              + "; phased as positive " + ", ".join(f"{run} {sum(runs[run]['positive'])}" for run in present) + "; "
              + " / ".join(f"{runs[run]['seconds']:.0f}" for run in present) + " s")
        for i in np.flatnonzero(~np.logical_and.reduce([ok[run] for run in present])):
            print(f"    {kind_of(int(size), i):14s} PyNX {best[i]:.3f}  " + "  ".join(f"{run} {err[run][i]:.3f}" for run in present))
        for run in present:
            total = totals.setdefault(int(size), {}).setdefault(run, [0, []])
            total[0] += int(ok[run].sum())
            total[1] += list(err[run])
    for size, t in totals.items():
        print(f"{size}^2: " + ", ".join(f"{run} {n} of {len(e)} (mean {np.mean(e):.3f})" for run, (n, e) in t.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True, help="SIZE:OBJECT_OFFSET:SEED,...")
    ap.add_argument("--starts", type=int, default=10, help="starts of the auto run (half complex, half positive)")
    ap.add_argument("--complex-starts", type=int, default=10, help="starts of the complex run")
    ap.add_argument("--runs", default="complex,auto", help=f"runs to compare, of {', '.join(RUNS)}")
    ap.add_argument("--pynx", type=Path, required=True, help="folder of selection_trials.py pynx-best's files")
    ap.add_argument("--out", type=Path, required=True, help="JSON of every run's errors (reported again if it exists)")
    args = ap.parse_args(argv)
    compared = args.runs.split(",")
    if unknown := set(compared) - set(RUNS):
        ap.error(f"unknown runs {sorted(unknown)}: choose among {', '.join(RUNS)}")
    sets = json.loads(args.out.read_text()) if args.out.exists() else {}
    for item in args.plan.split(","):
        size, offset, seed = (int(v) for v in item.split(":"))
        name = f"{size}_o{offset}_s{seed}"
        missing = [run for run in compared if run not in sets.get(name, {})]
        if missing:
            starts = {run: args.complex_starts if run == "complex" else args.starts for run in missing}
            sets.setdefault(name, {}).update(phase_set(size, offset, seed, starts))
            args.out.write_text(json.dumps(sets))
            print(f"phased {name}", flush=True)
    report(sets, args.pynx, compared)


if __name__ == "__main__":
    main()
