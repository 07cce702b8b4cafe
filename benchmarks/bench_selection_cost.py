"""What the start selection and the support cap cost next to the iterations: one 256^2 pattern,
8 starts, default recipe.

    PYTHONPATH=$PWD python benchmarks/bench_selection_cost.py

Prints the wall time of ``phase`` and, within it, of ``combine_starts`` (selection, alignment,
averaging, figures of merit) for each ``selection`` rule (bic, consensus, llk); then, for a pattern
whose supports run away without the cap (`cell`, 10^6 photons), the time spent trimming supports to
the cap and how many trims there were.
"""

import time

import numpy as np

from xfel_dl_plugins.phasing import engine, multistart
from xfel_dl_plugins.phasing.defaults import SELECTIONS
from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction, make_object


def main() -> None:
    rng = np.random.default_rng(0)
    iobs, valid, _ = diffraction(make_object((256, 256), "blobs", rng=rng), 1e8, beam_stop_mask((256, 256), 2.0), rng)
    combine, spent = multistart.combine_starts, []

    def timed_combine(*args, **kwargs):
        t0 = time.perf_counter()
        result = combine(*args, **kwargs)
        spent.append(time.perf_counter() - t0)
        return result

    multistart.combine_starts = timed_combine
    try:
        for selection in SELECTIONS:
            spent.clear()
            t0 = time.perf_counter()
            multistart.phase(iobs[None], valid[None], n_starts=8, n_keep=4, selection=selection, device="cpu", seed=0)
            print(f"{selection}: phase {time.perf_counter() - t0:.2f} s, of which combine_starts {sum(spent):.2f} s")
    finally:
        multistart.combine_starts = combine

    iobs, valid, _ = diffraction(make_object((256, 256), "cell", rng=rng), 1e6, beam_stop_mask((256, 256), 4.0), rng)
    cap, trims = engine.PhasingState._cap_support, []

    def timed_cap(state, new, smooth):
        before = state.backend.to_numpy(new.sum(axis=state.axes)).copy()
        t0 = time.perf_counter()
        cap(state, new, smooth)
        trims.append((time.perf_counter() - t0, int((state.backend.to_numpy(new.sum(axis=state.axes)) < before).sum())))

    engine.PhasingState._cap_support = timed_cap
    try:
        t0 = time.perf_counter()
        multistart.phase(iobs[None], valid[None], n_starts=8, n_keep=4, device="cpu", seed=0)
        total = time.perf_counter() - t0
    finally:
        engine.PhasingState._cap_support = cap
    print(f"support cap (cell, 1e6 photons): phase {total:.2f} s, of which the cap {sum(t for t, _ in trims):.3f} s "
          f"over {len(trims)} shrink-wrap steps, {sum(n for _, n in trims)} supports trimmed")


if __name__ == "__main__":
    main()
