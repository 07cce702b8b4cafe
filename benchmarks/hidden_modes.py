"""What the beam stop hides (issue 4): the test patterns' modes that lie mostly in unmeasured pixels,
and the 256^2 `cell` phased with smaller beam stops.

  PYTHONPATH=$PWD python benchmarks/hidden_modes.py --figure docs/figures/phasing_hidden_modes.png

Per test set (bench_phasing's objects, 128^2 with its 2-px beam stop, 256^2 with its 4-px one) it
prints, per pattern, the largest fraction of a support mode's power that falls in the unmeasured
pixels and how many modes have more than half (:func:`~xfel_dl_plugins.phasing.metrics.missing_mode_fractions`
on the true support). Then it phases the 256^2 `cell` (1e7 and 1e8 photons) with the defaults and
beam stops of 0, 2 and 4 px, and with the 4-px stop and positivity (the cell is a real, non-negative
density): the error after removing the ambiguities against what the stop hides.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from xfel_dl_plugins.phasing import metrics, phase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phasing as bp  # noqa: E402
import selection_trials as st  # noqa: E402

SETS = ((128, 0), (128, 1000), (128, 2000), (256, 0), (256, 1000))
#: (beam-stop radius in px, positivity); the 256^2 set's stop is 256 / 64 = 4 px
CELL_CASES = ((0.0, False), (2.0, False), (4.0, False), (4.0, True))


def hidden_by_set() -> dict:
    """(size, offset) -> (kinds, largest hidden fraction per pattern, modes over half per pattern)."""
    out = {}
    for size, offset in SETS:
        cases, _, valid, truths = bp.quality_cases(bp.QUALITY_KINDS, st.photon_levels(size), size, size / 64,
                                                   object_offset=offset)
        fractions = [st.true_support_fractions(t, v) for t, v in zip(truths, valid)]
        out[size, offset] = ([f"{kind} {photons:.0e}" for kind, photons in cases], np.array([f[0] for f in fractions]),
                             np.array([(f > metrics.UNCONSTRAINED_FRACTION).sum() for f in fractions]))
    return out


def cell_with_stops(n_starts: int, seed: int) -> list[dict]:
    """The 256^2 `cell` patterns of the table (1e7, 1e8) phased in each case of CELL_CASES."""
    rows = []
    for stop, positivity in CELL_CASES:
        patterns = [bp._pattern(256, "cell", photons, seed=100 + 10 * bp.QUALITY_KINDS.index("cell") + p,
                                stop=stop if stop else 0.01)  # 0.01 px: only the zero frequency unmeasured
                    for p, photons in enumerate(st.photon_levels(256))]
        iobs, valid, truths = (np.stack([p[k] for p in patterns]) for k in range(3))
        t0 = time.perf_counter()
        result = phase(iobs, valid, n_starts=n_starts, seed=seed, device="cpu", positivity=positivity)
        for i, photons in enumerate(st.photon_levels(256)):
            fractions = st.true_support_fractions(truths[i], valid[i])
            rows.append(dict(stop=stop, positivity=positivity, photons=photons, truth=truths[i], recon=result.reconstruction[i],
                             error=metrics.ambiguity_error(truths[i], result.reconstruction[i]),
                             hidden=float(fractions[0]), modes=int((fractions > metrics.UNCONSTRAINED_FRACTION).sum())))
            print(f"cell 256^2 {photons:.0e} photons, beam stop {stop:g} px{', positivity' if positivity else ''}: "
                  f"error {rows[-1]['error']:.3f}, largest hidden "
                  f"fraction {rows[-1]['hidden']:.3f}, modes over half {rows[-1]['modes']} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return rows


def figure(path: Path, hidden: dict, cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(19, 6.5))
    grid = fig.add_gridspec(2, 2 + len(CELL_CASES), width_ratios=(1.8,) + (1,) * (1 + len(CELL_CASES)))
    ax = fig.add_subplot(grid[:, 0])
    for k, ((size, offset), (_, largest, _)) in enumerate(hidden.items()):
        ax.plot(k + np.linspace(-0.3, 0.3, len(largest)), largest, "o", ms=4)
    ax.axhline(metrics.UNCONSTRAINED_FRACTION, color="0.5", ls="--", lw=1)
    ax.set_xticks(range(len(hidden)), [f"{size}^2\nobjects +{offset}" for size, offset in hidden], fontsize=8)
    ax.set(ylabel="largest fraction of a support mode's power unmeasured", ylim=(0, 1.02),
           title="what the beam stop hides (2 px at 128^2, 4 px at 256^2)")

    def show(a, image, title):
        a.imshow(np.abs(image)[64:192, 64:192], cmap="gray")
        a.set_title(title, fontsize=8)
        a.axis("off")

    for r, photons in enumerate(sorted({row["photons"] for row in cells})):
        rows = [row for row in cells if row["photons"] == photons]
        show(fig.add_subplot(grid[r, 1]), rows[0]["truth"], f"cell 256^2, truth\n{photons:.0e} photons")
        for c, row in enumerate(rows):
            show(fig.add_subplot(grid[r, 2 + c]), row["recon"],
                 f"stop {row['stop']:g} px{', positivity' if row['positivity'] else ''}: error {row['error']:.2f}\n"
                 f"largest hidden {row['hidden']:.2f}, {row['modes']} mode{'' if row['modes'] == 1 else 's'} > 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-starts", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args(argv)
    hidden = hidden_by_set()
    for (size, offset), (names, largest, modes) in hidden.items():
        print(f"{size}^2, objects + {offset}: " + ", ".join(f"{n} {f:.2f} ({m})" for n, f, m in zip(names, largest, modes)))
    cells = cell_with_stops(args.n_starts, args.seed)
    if args.figure:
        figure(args.figure, hidden, cells)


if __name__ == "__main__":
    main()
