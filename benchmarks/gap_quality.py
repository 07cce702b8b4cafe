"""Phase retrieval with a detector gap through the beam or readout noise, against PyNX's best start (issue 4).

AGIPD-1M's quadrants leave unmeasured lines through the direct beam: the Fourier components along
them are free, like the beam stop's. This runs the quality test objects (selection_trials.py's
sets: polygon, blobs, complex_blobs, cell; 128^2 at 1e6-1e9 photons, 256^2 at 1e7-1e8) with a gap
of ``--width`` rows through the centre (``--layout gap``), rows and columns (``cross``), or rows
away from the beam (``offset``: 10 px from the centre, where a module edge would be), or none
(``none``: the beam stop alone), beside the beam stop of size / 64 px; PyNX's default run (10
starts) and ours (the shipped defaults, ``positivity="auto"``) on the same patterns.

``--readout-noise SIGMA`` adds Gaussian noise of SIGMA photons per pixel to the counts, as a
calibrated detector's data carry (the simulator's default: 0.15 photons per native pixel, 0.6 for a
grid pixel of 4 x 4): weak pixels then read below zero. Ours gets the readings as they are; PyNX
gets them with negatives set to zero, as its CDI runner does by default. ``--beam-stop R``: a beam stop
of radius R px instead of the sets' size / 64 (a larger one hides more of the object's low frequencies).

  benchmarks/setup_pynx.sh /work/bench          # once
  PYTHONPATH=$PWD python benchmarks/gap_quality.py --plan 128:0,128:1000,256:0 --seeds 1 2 --layout gap \
      --pynx-dir /work/bench --out DIR           # DIR keeps PyNX's best errors per set (reused)

Prints per set and seed how many of our selected results are at or below PyNX's best start (its
lowest-error start: an oracle choice), both mean errors, and the patterns we miss. ``--figure PNG``:
the first set's patterns at 1e8 photons (first seed): the measured intensities, the truth and ours.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from xfel_dl_plugins.phasing import metrics, phase
from xfel_dl_plugins.phasing.testobjects import beam_stop_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_phasing as bp  # noqa: E402
import selection_trials as st  # noqa: E402

LAYOUTS = ("gap", "cross", "offset", "none")
OFFSET_GAP_DISTANCE = 10  # px from the centre to the first row of the ``offset`` layout's gap


def gap_mask(size: int, layout: str, width: int, stop: float | None = None) -> np.ndarray:
    """Valid pixels (FFT-centred) of a size^2 pattern: the beam stop (radius ``stop`` px, default
    size / 64 as the test sets') and the gap of ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    stop = size / 64 if stop is None else stop
    if layout == "none":
        return beam_stop_mask((size, size), stop)
    if layout == "offset":
        rows = np.fft.fftfreq(size) * size
        gap = (rows >= OFFSET_GAP_DISTANCE) & (rows < OFFSET_GAP_DISTANCE + width)
        return beam_stop_mask((size, size), stop) & ~gap[:, None]
    valid = beam_stop_mask((size, size), stop, gap_width=width)
    return valid & valid.T if layout == "cross" else valid


def gapped_patterns(size: int, offset: int, layout: str, width: int, readout_noise: float = 0.0,
                    stop: float | None = None):
    """selection_trials' test set (object seeds + ``offset``) with the gap's pixels unmeasured, a beam
    stop of radius ``stop`` px (default the set's, size / 64) and Gaussian readout noise of
    ``readout_noise`` photons per pixel (its own stream per set)."""
    iobs, valid, truths = st.patterns(size, offset)
    valid = valid & gap_mask(size, layout, width, stop)
    if readout_noise > 0:
        rng = np.random.default_rng([size, offset, 7919])
        iobs = iobs + readout_noise * rng.standard_normal(iobs.shape)
    return np.where(valid, iobs, 0).astype(np.float32), valid, truths


def run_name(size: int, offset: int, layout: str, width: int, readout_noise: float = 0.0,
             stop: float | None = None) -> str:
    """A set's name under the detector effects, e.g. "128_o0_gap3_noise0.6"; PyNX's best errors are
    cached as ``pynx_best_<name>.npy``."""
    return (f"{size}_o{offset}_{layout}{width if layout != 'none' else ''}"
            + (f"_stop{stop:g}" if stop is not None else "")
            + (f"_noise{readout_noise:g}" if readout_noise else ""))


def describe(args) -> str:
    """The detector effects of a run in words, e.g. "gap of 3 px, readout noise 0.6 photons"."""
    layout = "beam stop only" if args.layout == "none" else f"{args.layout} of {args.width} px"
    stop = f", beam stop r = {args.beam_stop:g} px" if args.beam_stop is not None else ""
    return layout + stop + (f", readout noise {args.readout_noise:g} photons" if args.readout_noise else "")


def figure(path: Path, iobs, valid, truths, reconstructions, size: int, title: str) -> None:
    """Per object kind at 1e8 photons: log10 of the measured intensities (gap and stop in white), the
    truth's |density| and ours aligned onto it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = st.photon_levels(size)
    fig, axes = plt.subplots(3, len(bp.QUALITY_KINDS), figsize=(3 * len(bp.QUALITY_KINDS), 9), squeeze=False)
    for j, kind in enumerate(bp.QUALITY_KINDS):
        c = j * len(levels) + levels.index(1e8)
        ours = metrics.aligned_real_space(metrics.align_to_reference(truths[c], reconstructions[c]))
        shown = np.where(valid[c], np.log10(np.maximum(iobs[c], 0) + 1), np.nan)
        for i, (img, label, cmap) in enumerate([
                (np.fft.fftshift(shown), f"{kind}: log10(counts + 1)", "magma"),
                (np.abs(truths[c]), "truth", "gray"),
                (np.abs(ours), f"ours, error {metrics.ambiguity_error(truths[c], reconstructions[c]):.3f}", "gray")]):
            axes[i, j].imshow(img, cmap=cmap)
            axes[i, j].set_title(label, fontsize=8)
            axes[i, j].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="128:0,128:1000,128:2000", help="SIZE:OBJECT_OFFSET,...")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="our random starts' seeds")
    ap.add_argument("--layout", choices=LAYOUTS, default="gap")
    ap.add_argument("--width", type=int, default=3, help="gap width in pixels (rows, and columns for cross)")
    ap.add_argument("--readout-noise", type=float, default=0.0, help="Gaussian noise, photons rms per pixel")
    ap.add_argument("--beam-stop", type=float, help="beam stop radius in px (default size / 64, the sets')")
    ap.add_argument("--pynx-dir", type=Path, default=Path("/work/bench"))
    ap.add_argument("--out", type=Path, required=True, help="folder for PyNX's best errors and our results")
    ap.add_argument("--figure", type=Path, help="PNG of the first set's patterns at 1e8 photons, first seed")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pynx = bp.PyNX(args.pynx_dir)
    totals, figure_drawn = {}, False
    for item in args.plan.split(","):
        size, offset = (int(v) for v in item.split(":"))
        iobs, valid, truths = gapped_patterns(size, offset, args.layout, args.width, args.readout_noise,
                                              args.beam_stop)
        name = run_name(size, offset, args.layout, args.width, args.readout_noise, args.beam_stop)
        cached = args.out / f"pynx_best_{name}.npy"
        if not cached.exists():
            t0 = time.perf_counter()
            np.save(cached, st.pynx_best_errors(pynx, np.maximum(iobs, 0), valid, truths))
            print(f"{name}: PyNX {time.perf_counter() - t0:.0f} s", flush=True)
        best = np.load(cached)
        for seed in args.seeds:
            t0 = time.perf_counter()
            result = phase(iobs, valid, n_starts=10, n_keep=st.N_KEEP, seed=seed, device="cpu", positivity="auto")
            err = np.array([metrics.ambiguity_error(t, rec) for t, rec in zip(truths, result.reconstruction)])
            ok = err <= best + 1e-9
            print(f"{name} seed {seed}: at or below PyNX's best {ok.sum()} of {len(ok)}; mean error ours "
                  f"{err.mean():.3f}, PyNX's best {best.mean():.3f}; {time.perf_counter() - t0:.0f} s", flush=True)
            for i in np.flatnonzero(~ok):
                kind = bp.QUALITY_KINDS[i // len(st.photon_levels(size))]
                print(f"    {i:2d} {kind:14s} {st.photon_levels(size)[i % len(st.photon_levels(size))]:.0e}  "
                      f"PyNX {best[i]:.3f}  ours {err[i]:.3f}")
            (args.out / f"ours_{name}_s{seed}.json").write_text(json.dumps(err.tolist()))
            if args.figure and not figure_drawn:
                figure(args.figure, iobs, valid, truths, result.reconstruction, size,
                       f"{name}, our seed {seed}: {describe(args)}" +
                       ("" if args.beam_stop is not None else f", beam stop r = {size / 64:g} px"))
                figure_drawn = True
            total = totals.setdefault(size, [0, 0, [], []])
            total[0] += int(ok.sum())
            total[1] += len(ok)
            total[2] += list(err)
            total[3] += list(best)
    for size, (n_ok, n, err, best) in totals.items():
        print(f"{size}^2, {describe(args)}: {n_ok} of {n} at or below PyNX's best start; "
              f"mean error ours {np.mean(err):.3f}, PyNX's best {np.mean(best):.3f}")


if __name__ == "__main__":
    main()
