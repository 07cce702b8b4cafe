"""Where positivity = "auto" could choose (issue 4): each run's lead BIC at the GUIDE and its selected BIC at the end.

  PYTHONPATH=$PWD python benchmarks/positivity_bic.py --objects pictures --seed 1   # 32 patterns of 128^2, ~3 min
  PYTHONPATH=$PWD python benchmarks/positivity_bic.py --size 256 --photons 1e7 1e8 --seed 1

Per pattern of bench_phasing.py's quality sets (same objects, beam stop size / 64 px), the complex and the
positive run of phase(positivity="auto", n_starts=10) (5 starts each, the same starts as auto's runs): the
BIC of each run's lead at the first GUIDE (what positivity_choice="guide" compares), the BIC of each run's
selected start at the end (what the default compares), which run each would choose, and the errors. It
shows whether the first generation's BICs tell which run the second generation favours.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from xfel_dl_plugins.phasing import metrics, phase
from xfel_dl_plugins.phasing.multistart import StartFits, rank_starts

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phasing as bp  # noqa: E402
from picture_objects import quality_objects  # noqa: E402


def lead_bic_at_guide(result, c: int, iobs: np.ndarray, valid: np.ndarray, positive: bool) -> float:
    """The BIC of the start the first GUIDE led with (the selection's bic rule, as the GUIDE ranks)."""
    first = result.guided[0]
    free = result.free_pixels[c]
    fts = np.stack([np.fft.fftn(o.astype(np.complex128)) for o in first.objects[c]])
    fits = StartFits.measure(fts, first.supports[c], iobs, valid & ~free, free, 1 if positive else 2)
    return float(fits.bic[rank_starts(fts, first.ranking[c], 0.15, "bic", fits)[0]])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", choices=list(bp.OBJECTS_DESCRIPTION), default="test")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--photons", type=float, nargs="+", default=list(bp.QUALITY_PHOTONS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pynx-dir", type=Path, default=Path("/work/bench"), help="where setup_pynx.sh put scikit-image's data")
    args = ap.parse_args(argv)
    kinds, pictures = quality_objects(args.objects, args.pynx_dir)
    cases, iobs, valid, truths = bp.quality_cases(kinds or bp.QUALITY_KINDS, tuple(args.photons), args.size, args.size / 64,
                                                  pictures)
    runs = {positive: phase(iobs, valid, n_starts=5, seed=args.seed, device="cpu", positivity=positive, keep_starts=True)
            for positive in (False, True)}
    name = {False: "complex", True: "positive"}
    for c, (kind, photons) in enumerate(cases):
        guide = {p: lead_bic_at_guide(r, c, iobs[c].astype(np.float64), valid[c], p) for p, r in runs.items()}
        end = {p: float(r.bic[c]) for p, r in runs.items()}
        err = {p: metrics.ambiguity_error(truths[c], r.reconstruction[c]) for p, r in runs.items()}
        ratio = max(guide.values()) / min(guide.values())
        print(f"{kind:15s} {photons:.0e}  GUIDE: complex {guide[False]:.4g} positive {guide[True]:.4g} "
              f"(ratio {ratio:.2f}) -> {name[guide[True] < guide[False]]:8s} | end: complex {end[False]:.4g} "
              f"positive {end[True]:.4g} -> {name[end[True] < end[False]]:8s} | error complex {err[False]:.3f} "
              f"positive {err[True]:.3f}", flush=True)


if __name__ == "__main__":
    main()
