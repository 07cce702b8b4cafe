"""Phase retrieval benchmark: xfel_dl_plugins.phasing side by side with PyNX (CPU) in one run.

    benchmarks/setup_pynx.sh /work/bench            # once: PyNX in its own venv, outside the repo
    PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/bench_phasing.py --pynx-dir /work/bench \\
        --markdown section.md --figures docs/figures

Measures, on the same inputs and interleaved (the machine is shared, so only ratios measured in
the same run mean anything):
  1. time per iteration of ER/HIO/RAAR at 256^2 and 512^2: ours / PyNX and ours / FFT floor
     (a bare scipy.fft forward + inverse pair, complex64, in place, same worker count);
  2. batched throughput: 64 patterns of 256^2 as one batch vs PyNX one by one;
  3. quality: test objects with Poisson noise (1e6..1e9 photons) and a beam-stop hole, 10 random
     starts each, the same schedule in both codes: fraction of starts that converge, and the error
     (after removing translation, twin and global phase) of our automatically selected result vs
     PyNX's best start;
GPU figures come from benchmarks/bench_gpu.py (run on a CUDA machine).
PyNX runs in a subprocess (benchmarks/pynx_worker.py) with its own interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from xfel_dl_plugins.phasing import DEFAULT_RECIPE, HIO, SW, Operator, PhasingState, metrics, parse_recipe, phase
from xfel_dl_plugins.phasing.backend import NumpyBackend
from xfel_dl_plugins.phasing.multistart import auto_family_sizes, combine_starts
from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction, make_object

from picture_objects import picture_object, quality_objects  # beside this script

RECIPE = DEFAULT_RECIPE
#: The schedule pynx_worker.py's quality task runs (its operators are PyNX's, written out there)
PYNX_SCHEDULE = "(SW*HIO**50)**12 * (SW(scale=0.67)*RAAR**50)**8 * ER**100"
CONVERGED_MAX = 0.3  # a start with a larger error did not solve the pattern, whatever the others did
HERE = Path(__file__).resolve().parent


def recipe_generations() -> tuple[str, str]:
    """Our default recipe's first generation (PyNX's schedule, ours with OSS after each HIO iteration)
    and the second, after its GUIDE; the quality comparison stops here if the recipe no longer begins
    with what PyNX's worker runs."""
    first, second = (re.split(r"\s*\*\s*GUIDE(?:\([^)]*\))?\s*\*\s*", RECIPE, maxsplit=1) + [""])[:2]
    if without_oss(first) != PYNX_SCHEDULE or not second:
        raise SystemExit(f"bench_phasing: the default recipe {RECIPE!r} no longer starts with PyNX's schedule "
                         f"{PYNX_SCHEDULE!r} and a GUIDE: update pynx_worker.py's quality task and PYNX_SCHEDULE")
    return first, second


def without_oss(recipe: str) -> str:
    """The recipe with its OSS steps taken out (PyNX has no OSS): ``(HIO*OSS)`` -> ``HIO``."""
    return re.sub(r"\(HIO\*OSS(?:\([^)]*\))?\)", "HIO", recipe)


class PyNX:
    """Runs pynx_worker.py tasks in the PyNX venv."""

    def __init__(self, bench_dir: Path):
        self.python = bench_dir / "venv" / "bin" / "python"
        dist = next((bench_dir / "pynx").glob("usr/lib/python3*/dist-packages"), None)
        if not self.python.exists() or dist is None:
            raise SystemExit(f"PyNX not found under {bench_dir}: run benchmarks/setup_pynx.sh {bench_dir}")
        self.env = {**os.environ, "PYTHONPATH": str(dist), "PYNX_PU": "cpu"}

    def run(self, task: str, **arrays) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(src, **arrays)
            proc = subprocess.run([str(self.python), str(HERE / "pynx_worker.py"), task, str(src), str(dst)],
                                  env=self.env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"PyNX {task} failed:\n{proc.stderr[-2000:]}")
            with np.load(dst) as out:
                return {k[len("result_"):]: out[k] for k in out.files if k.startswith("result_")}


def _pattern(n: int, kind="polygon", photons=1e8, seed=0, stop=None, picture_dir: Path | None = None):
    """(counts, valid, truth) of a test object (or, with ``picture_dir``, of a picture object)."""
    rng = np.random.default_rng(seed)
    obj = picture_object(kind, n, picture_dir) if picture_dir else make_object((n, n), kind, rng=rng)
    return diffraction(obj, photons, beam_stop_mask((n, n), stop if stop is not None else n / 64), rng)


def _seconds_per_call(func, n_calls: int) -> float:
    func()
    t0 = time.perf_counter()
    for _ in range(n_calls):
        func()
    return (time.perf_counter() - t0) / n_calls


def fft_floor(n: int, workers: int, n_calls: int) -> float:
    a = (np.random.default_rng(0).standard_normal((n, n)) + 0j).astype(np.complex64)

    def pair():
        b = sfft.fftn(a, overwrite_x=True, workers=workers)
        sfft.ifftn(b, overwrite_x=True, workers=workers)
    return _seconds_per_call(pair, n_calls)


def ours_per_iteration(iobs, valid, workers: int, n_iter: int) -> dict:
    out = {}
    for rule in ("er", "hio", "raar"):
        state = PhasingState(iobs, valid, n_starts=1, calc_llk=0, backend=NumpyBackend(2, workers), seed=0)
        out[rule] = _seconds_per_call(lambda: state.iterate(rule, 0.9), n_iter)
    return out


def bench_timing(pynx: PyNX, sizes, repeats: int, workers: int) -> list[dict]:
    rows = []
    for n in sizes:
        iobs, valid, _ = _pattern(n)
        n_iter = max(20, int(200 * (256 / n) ** 2))
        samples = {k: [] for k in ("ours", "ours_1", "pynx", "floor", "floor_1")}
        for _ in range(repeats):  # interleaved so that background load hits every column alike
            samples["floor"].append({"pair": fft_floor(n, workers, n_iter)})
            samples["ours"].append(ours_per_iteration(iobs, valid, workers, n_iter))
            samples["pynx"].append({k: float(v) for k, v in pynx.run("timing", iobs=iobs, valid=valid, n_iter=n_iter).items()})
            samples["ours_1"].append(ours_per_iteration(iobs, valid, 1, n_iter))
            samples["floor_1"].append({"pair": fft_floor(n, 1, n_iter)})
        med = {k: {a: float(np.min([s[a] for s in v])) for a in v[0]} for k, v in samples.items()}
        for alg in ("er", "hio", "raar"):
            rows.append(dict(size=n, alg=alg.upper(), ours_ms=1e3 * med["ours"][alg], ours1_ms=1e3 * med["ours_1"][alg],
                             pynx_ms=1e3 * med["pynx"][alg], floor_ms=1e3 * med["floor"]["pair"],
                             floor1_ms=1e3 * med["floor_1"]["pair"]))
        print(f"timing {n}: " + json.dumps(rows[-3:]), flush=True)
    return rows


def bench_batch(pynx: PyNX, n_patterns: int, n: int, n_iter: int, workers: int, repeats: int) -> dict:
    pats = [_pattern(n, seed=s) for s in range(n_patterns)]
    iobs = np.stack([p[0] for p in pats])
    valid = np.stack([p[1] for p in pats])
    ours, ours_1, theirs = [], [], []

    def run_ours(n_workers: int) -> float:
        state = PhasingState(iobs, valid, n_starts=1, calc_llk=0, backend=NumpyBackend(2, n_workers), seed=0)
        HIO().apply(state)
        t0 = time.perf_counter()
        (HIO() ** n_iter).apply(state)
        return time.perf_counter() - t0

    for _ in range(repeats):
        ours.append(run_ours(workers))
        theirs.append(float(pynx.run("batch", iobs=iobs, valid=valid, n_iter=n_iter)["seconds"]))
        ours_1.append(run_ours(1))
    res = dict(patterns=n_patterns, size=n, iterations=n_iter, ours_s=float(np.min(ours)),
               ours1_s=float(np.min(ours_1)), pynx_s=float(np.min(theirs)))
    res["ours_pattern_it_per_s"] = n_patterns * n_iter / res["ours_s"]
    res["pynx_pattern_it_per_s"] = n_patterns * n_iter / res["pynx_s"]
    print("batch: " + json.dumps(res), flush=True)
    return res


def _llk(obj, iobs, valid):
    """Poisson LLK of an object over measured pixels, at the best intensity scale (code-independent)."""
    icalc = np.abs(sfft.fftn(obj.astype(np.complex128))) ** 2
    icalc *= metrics.best_intensity_scale(iobs, icalc, valid)
    return metrics.poisson_llk(iobs, icalc, valid)


QUALITY_KINDS = ("polygon", "blobs", "complex_blobs", "cell")
QUALITY_PHOTONS = (1e6, 1e7, 1e8, 1e9)

#: The quality sets (``--objects``) as the report describes them.
OBJECTS_DESCRIPTION = {
    "test": "test objects of `xfel_dl_plugins.phasing.testobjects`, oversampling 2.5",
    "pictures": "pictures bundled with scikit-image, `benchmarks/picture_objects.py`, oversampling 2.67",
    "pictures2": "the second held-out set of pictures bundled with scikit-image, `benchmarks/picture_objects.py`, "
                 "oversampling 2.2-3.5, some off the centre",
}


def quality_cases(kinds, photon_levels, n: int, stop: float, picture_dir: Path | None = None, object_offset: int = 0):
    """The quality test's patterns: ([(kind, photons)], iobs, valid, truths), each from its own seed
    (``object_offset`` added: other objects of the same kinds, as the held-out sets use)."""
    cases, iobs, valid, truths = [], [], [], []
    for k, kind in enumerate(kinds):
        for p, photons in enumerate(photon_levels):
            i, v, t = _pattern(n, kind, photons, seed=100 + 10 * k + p + object_offset, stop=stop,
                               picture_dir=picture_dir)
            cases.append((kind, photons))
            iobs.append(i), valid.append(v), truths.append(t)
    return cases, np.stack(iobs), np.stack(valid), truths


def _shrink_wraps(op: Operator) -> tuple[SW, SW]:
    """The first and last SW step of a schedule (the HIO and the RAAR stage's in the default recipe)."""
    found = [step for step in op.steps() if isinstance(step, SW)]
    return found[0], found[-1]


def bench_quality(pynx: PyNX, kinds, photon_levels, n: int, n_starts: int, stop: float, seeds=(1,),
                  picture_dir: Path | None = None, positivity: bool | str = False, our_starts: int | None = None,
                  objects: str = "test") -> dict:
    """``positivity`` and ``our_starts`` (default ``n_starts``, PyNX's) are our runs' (phase()); ``objects``
    names the set for the report (a key of :data:`OBJECTS_DESCRIPTION`)."""
    recipe_generations()  # before the runs: the comparison needs our first generation to be PyNX's schedule
    cases, iobs, valid, truths = quality_cases(kinds, photon_levels, n, stop, picture_dir)
    ours_run = dict(recipe=RECIPE, n_starts=our_starts or n_starts, n_keep=4, device="cpu", positivity=positivity)
    t0 = time.perf_counter()
    ours = phase(iobs, valid, seed=seeds[0], keep_starts=True, **ours_run)
    ours_s = time.perf_counter() - t0
    # Other draws of our random starts: the selected result's error per seed (PyNX keeps its one draw).
    other_draws = [phase(iobs, valid, seed=s, **ours_run).reconstruction for s in seeds[1:]]
    runs = {}
    # PyNX's default, and PyNX with our rule as the recipe sets it: max rule, our widths (they scale
    # with the array), the RAAR stage's threshold factor
    hio_sw, raar_sw = _shrink_wraps(parse_recipe(RECIPE))
    our_sw = (hio_sw.threshold * hio_sw.scale, "max", hio_sw.widths((n, n)), raar_sw.scale / hio_sw.scale)
    for label, (thr, method, sigma, raar_scale) in {"pynx_default": (0.25, "rms", (2.0, 0.5), 1.0),
                                                    "pynx_oursw": our_sw}.items():
        t0 = time.perf_counter()
        runs[label] = pynx.run("quality", iobs=iobs, valid=valid, n_starts=n_starts, seed=1, sw_threshold=thr,
                               sw_method=method, sw_sigma=np.array(sigma), sw_raar_scale=raar_scale)["objects"]
        runs[label + "_s"] = time.perf_counter() - t0
    # Per-start figures from our first generation: independent random starts through PyNX's schedule
    # (the second generation's starts are guided towards one of them)
    first = ours.guided[0] if ours.guided else None
    first_objects, first_supports, first_ranking = ((first.objects, first.supports, first.ranking) if first else
                                                    (ours.start_objects, ours.start_supports, ours.start_llk_free))
    rows = []
    for c, ((kind, photons), truth) in enumerate(zip(cases, truths)):
        measured = valid[c]
        truth_llk = _llk(truth, iobs[c], measured)
        row = dict(kind=kind, photons=photons, truth_llk=truth_llk)
        err = {"ours": [metrics.ambiguity_error(truth, o) for o in first_objects[c]]}
        llk = {"ours": [_llk(o, iobs[c], measured) for o in first_objects[c]]}
        for label in ("pynx_default", "pynx_oursw"):
            objs = runs[label][c]
            err[label] = [metrics.ambiguity_error(truth, o) if np.abs(o).max() > 0 else 1.0 for o in objs]
            llk[label] = [_llk(o, iobs[c], measured) if np.abs(o).max() > 0 else np.inf for o in objs]
        best_err = min(min(e) for e in err.values())
        for label in err:
            e, ll = np.array(err[label]), np.array(llk[label])
            row[label + "_converged"] = float(np.mean(e <= min(CONVERGED_MAX, max(1.5 * best_err, best_err + 0.02))))
            row[label + "_floor"] = float(np.mean(ll <= 2.0 * truth_llk))
            row[label + "_best_err"] = float(e.min())
            row[label + "_llk_pick_err"] = float(e[np.argmin(ll)])
            row[label + "_median_err"] = float(np.median(e))
        row["ours_selected_err"] = metrics.ambiguity_error(truth, ours.reconstruction[c])
        row["ours_selected_err_seeds"] = [row["ours_selected_err"]] + [metrics.ambiguity_error(truth, r[c]) for r in other_draws]
        # The defaults before GUIDE: the first generation's starts selected and averaged as phase() does
        # (with positivity = "auto", those of the family the pattern's result came from)
        free, family = ours.free_pixels[c], _first_generation_family(ours, c, len(first_objects[c]))
        unguided = combine_starts(first_objects[c][family], first_supports[c][family], first_ranking[c][family], iobs[c],
                                  measured & ~free, free, 4, params_per_pixel=1 if ours.positivity[c] else 2,
                                  positivity=bool(ours.positivity[c]))
        row["ours_unguided_err"] = metrics.ambiguity_error(truth, unguided.reconstruction)
        row["ours_resolution_px"] = float(ours.resolution_px[c])
        row["ours_positive"] = bool(ours.positivity[c])
        rows.append(row)
        print("quality: " + json.dumps(row), flush=True)
    return dict(rows=rows, seeds=list(seeds), positivity=positivity, our_starts=ours_run["n_starts"], our_sw=our_sw, ours_s=ours_s, pynx_default_s=runs["pynx_default_s"], pynx_oursw_s=runs["pynx_oursw_s"],
                size=n, n_starts=n_starts, stop=stop, objects=objects, ours=ours, truths=truths, iobs=iobs, valid=valid,
                pynx_objects=runs["pynx_default"], cases=cases)


def _first_generation_family(result, c: int, n_starts: int) -> slice:
    """The first generation's starts (``n_starts``) of the run pattern ``c``'s result came from: all of
    them, or, where positivity = "auto" ran a complex and a positive run (complex starts first, as
    auto_family_sizes splits them), that run's."""
    if result.families is None:
        return slice(None)
    n_complex = auto_family_sizes(n_starts)[0]
    return slice(n_complex, None) if result.positivity[c] else slice(0, n_complex)


def figures(q: dict, outdir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    names = []
    kinds = list(dict.fromkeys(k for k, _ in q["cases"]))
    photons = sorted(set(p for _, p in q["cases"]))
    show_p = photons[-2] if len(photons) > 1 else photons[0]
    fig, axes = plt.subplots(3, len(kinds), figsize=(3 * len(kinds), 9), squeeze=False)
    for j, kind in enumerate(kinds):
        c = q["cases"].index((kind, show_p))
        truth = q["truths"][c]
        ours = metrics.aligned_real_space(metrics.align_to_reference(truth, q["ours"].reconstruction[c]))
        iobs, valid = q["iobs"][c], q["valid"][c]
        pyn = q["pynx_objects"][c]
        pick = int(np.argmin([_llk(o, iobs, valid) if np.abs(o).max() > 0 else np.inf for o in pyn]))
        pynx_al = metrics.aligned_real_space(metrics.align_to_reference(truth, pyn[pick]))
        for i, (img, title) in enumerate([(truth, f"truth ({kind})"),
                                          (ours, f"ours, err {metrics.ambiguity_error(truth, ours):.3f}"),
                                          (pynx_al, f"PyNX best-LLK, err {metrics.ambiguity_error(truth, pyn[pick]):.3f}")]):
            ax = axes[i, j]
            ax.imshow(np.abs(img), cmap="gray")  # aligned onto the truth: same frame
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"|density|, {show_p:.0e} photons, beam stop r={q['stop']} px, {q['size']}^2, {q['n_starts']} starts")
    fig.tight_layout()
    name = "phasing_reconstructions.png"
    fig.savefig(outdir / name, dpi=90)
    plt.close(fig)
    names.append(name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for c, (kind, p) in enumerate(q["cases"]):
        curve = q["ours"].patterns[c].prtf
        ax.plot(curve.frequency, curve.value, label=f"{kind} {p:.0e}", lw=1)
    ax.axhline(1 / np.e, color="k", ls="--", lw=0.8)
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("PRTF")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("PRTF of the best starts (ours)")
    fig.tight_layout()
    name = "phasing_prtf.png"
    fig.savefig(outdir / name, dpi=90)
    plt.close(fig)
    names.append(name)
    return names


def _floor_ms(row: dict) -> float:
    """The FFT floor of a timing row: the faster bare FFT pair, with the given workers or one thread."""
    return min(row["floor_ms"], row["floor1_ms"])


def markdown(args, timing, batch, quality, figs) -> str:
    cpu = os.cpu_count()
    lines = ["## Phase retrieval (`xfel_dl_plugins.phasing`) vs PyNX", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this {cpu}-core machine, shared with other "
             "jobs (load average often above 4 on 2 cores): every ratio compares columns measured interleaved in "
             f"the same run, each the best (minimum) of {args.repeats} rounds, which is the least load-sensitive estimate. PyNX = Debian `python3-pynx` 2025.1, CPU backend (`PYNX_PU=cpu`), run by "
             "`benchmarks/pynx_worker.py` in its own venv; it uses scipy.fft with one thread. Ours = scipy.fft "
             f"and Numba-compiled elementwise passes, complex64, in place, `workers={args.workers}` (and `workers=1` for the single-thread column).",
             "", "Reproduce:", "", "```",
             "benchmarks/setup_pynx.sh /work/bench",
             "PYTHONPATH=$PWD /work/main/.venv/bin/python benchmarks/bench_phasing.py --pynx-dir /work/bench "
             f"--markdown section.md --figures docs/figures" + (" --quick" if args.quick else ""),
             "```", "", "### Time per iteration (one pattern, LLK off)", "",
             "| size | alg | ours ms | PyNX ms | ours/PyNX | FFT floor ms | ours/floor | ours 1-thread ms | 1-thread/PyNX | 1-thread floor ms | 1-thread/floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in timing:
        lines.append(f"| {r['size']} | {r['alg']} | {r['ours_ms']:.3f} | {r['pynx_ms']:.3f} | **{r['ours_ms'] / r['pynx_ms']:.2f}** | "
                     f"{_floor_ms(r):.3f} | **{r['ours_ms'] / _floor_ms(r):.2f}** | {r['ours1_ms']:.3f} | "
                     f"{r['ours1_ms'] / r['pynx_ms']:.2f} | {r['floor1_ms']:.3f} | {r['ours1_ms'] / r['floor1_ms']:.2f} |")
    lines += ["", "Targets: ours/PyNX <= 0.8, ours/floor <= 1.5. The floor is one scipy.fft forward + inverse pair: "
              f"the faster of `workers={args.workers}` and one thread (two threads are slower than one below about "
              "512^2 here, and ours then uses one); the 1-thread floor uses one thread.", "", "### Batched throughput (HIO)", "",
              f"{batch['patterns']} patterns of {batch['size']}^2, {batch['iterations']} HIO iterations: ours as one "
              f"batched array {batch['ours_s']:.2f} s ({batch['ours_pattern_it_per_s']:.0f} pattern-iterations/s); PyNX "
              f"one by one {batch['pynx_s']:.2f} s ({batch['pynx_pattern_it_per_s']:.0f}/s): **{batch['pynx_s'] / batch['ours_s']:.2f}x** "
              f"(target >= 1.5x). Ours with one thread (chunks in sequence): {batch['ours1_s']:.2f} s, "
              f"{batch['pynx_s'] / batch['ours1_s']:.2f}x.", ""]
    rows = quality["rows"]
    first_generation, second_generation = recipe_generations()
    lines += ["### Quality from random starts", "",
              f"{len(rows)} patterns of {quality['size']}^2 ("
              + OBJECTS_DESCRIPTION[quality["objects"]]
              + f" per dimension), Poisson noise, central beam-stop hole of radius {quality['stop']} px; "
              f"{quality['n_starts']} random starts per pattern"
              + (f" (ours {quality['our_starts']})" if quality.get("our_starts", quality["n_starts"]) != quality["n_starts"] else "")
              + f", schedule `{without_oss(first_generation)}` in both codes (ours `{first_generation}`, with OSS "
              "smoothing the iterate outside the support after each HIO iteration; PyNX: "
              "`ER**100 * (sup*RAAR**50)**8 * (sup*HIO**50)**12 * cdi` after AutoCorrelationSupport + InitObjRandom); "
              f"ours then continues, after a guided restart (GUIDE: every start halfway to the selected one, after "
              f"alignment), with `{second_generation}` (its default recipe). "
              "The per-start columns (converged, floor) are our first generation's: independent starts, PyNX's schedule "
              "(with OSS)"
              + ({"auto": f"; with `positivity = \"auto\"` (ours: {auto_family_sizes(quality['our_starts'])[1]} of the "
                          f"{quality['our_starts']} starts phase a real, non-negative density, the others a complex "
                          "object; where one run leads decisively at the GUIDE its kind takes every start for the "
                          "second generation, the other run's going on too; per pattern the run whose selected start has "
                          "the lower BIC gives the result) they count both kinds of start. ",
                  True: "; ours with positivity. "}.get(quality.get("positivity"), ". ")) +
              "PyNX with its runner's shrink-wrap defaults (rms 0.25, sigma 2->0.5 px) and with ours (max "
              f"{quality['our_sw'][0]:g}, sigma {quality['our_sw'][2][0]:g}->{quality['our_sw'][2][1]:g} px, i.e. "
              f"1/64 -> 1/128 of the array side; threshold x {quality['our_sw'][3]:g} in the RAAR stage). "
              "Errors: ||truth - c T rec|| / ||truth|| minimised over translation (sub-pixel), global complex factor "
              "and twin. *Converged*: start error <= max(1.5 x, +0.02) the best error any start of any code reached "
              f"on that pattern, and <= {CONVERGED_MAX}. *Floor*: Poisson LLK (best scale) <= 2 x the LLK of the true object. *Selected*: our "
              "automatic output (supports capped at 1.5 x the autocorrelation's size bound, `support_cap`; "
              "default `selection=\"bic\"`: among the starts whose free-pixel deviance is at most "
              "1.5 x the lowest, or whose support is smaller than the lead those give, the lowest constrained "
              "deviance + 2 ln(n) x support size; averaged with up to 3 "
              "others within 0.15 of it after alignment); *without GUIDE*: the same selection on the first generation's "
              "starts (the defaults before 2026-11-27 10:42 UTC). PyNX *best*: its lowest-error start "
              "(an oracle choice); *LLK pick*: its lowest-LLK start.", "",
              "| object | photons | converged ours | conv. PyNX | conv. PyNX(our SW) | floor ours | floor PyNX | "
              "ours selected err | ours without GUIDE err | PyNX best err | PyNX LLK-pick err | PyNX(our SW) best | "
              "ours resolution px | ours phased as |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['photons']:.0e} | {r['ours_converged']:.1f} | {r['pynx_default_converged']:.1f} | "
                     f"{r['pynx_oursw_converged']:.1f} | {r['ours_floor']:.1f} | {r['pynx_default_floor']:.1f} | "
                     f"{r['ours_selected_err']:.3f} | {r['ours_unguided_err']:.3f} | {r['pynx_default_best_err']:.3f} | {r['pynx_default_llk_pick_err']:.3f} | "
                     f"{r['pynx_oursw_best_err']:.3f} | {r['ours_resolution_px']:.2f} | "
                     f"{'positive' if r.get('ours_positive') else 'complex'} |")
    conv = np.mean([r["ours_converged"] for r in rows]), np.mean([r["pynx_default_converged"] for r in rows])
    wins = sum(r["ours_selected_err"] <= r["pynx_default_best_err"] + 1e-9 for r in rows)
    wins_pick = sum(r["ours_selected_err"] <= r["pynx_default_llk_pick_err"] + 1e-9 for r in rows)
    wins_unguided = sum(r["ours_unguided_err"] <= r["pynx_default_best_err"] + 1e-9 for r in rows)
    lines += ["", f"Mean converged fraction: ours {conv[0]:.2f}, PyNX {conv[1]:.2f}. Our selected result at or below "
              f"PyNX's best (oracle) start on {wins}/{len(rows)} patterns, at or below PyNX's lowest-LLK start on "
              f"{wins_pick}/{len(rows)}; without GUIDE at or below PyNX's best on {wins_unguided}/{len(rows)}. Wall time for all starts: ours {quality['ours_s']:.0f} s (one batch, both generations), PyNX "
              f"{quality['pynx_default_s']:.0f} s.", ""]
    seeds = quality.get("seeds", [1])
    if len(seeds) > 1:
        per_seed = [sum(r["ours_selected_err_seeds"][i] <= r["pynx_default_best_err"] + 1e-9 for r in rows) for i in range(len(seeds))]
        means = [np.mean([r["ours_selected_err_seeds"][i] for r in rows]) for i in range(len(seeds))]
        lines += [f"Other draws of our random starts (seeds {', '.join(map(str, seeds))}; the table shows seed {seeds[0]}): "
                  "selected result at or below PyNX's best start on " + ", ".join(f"{w}/{len(rows)}" for w in per_seed)
                  + " patterns; mean selected error " + ", ".join(f"{m:.3f}" for m in means) + ".", ""]
    lines += ["### GPU", "", "Measured by `benchmarks/bench_gpu.py` on a CUDA machine: see the GPU section of this page.",
              "", "### Figures", ""] + [f"![{f}](figures/{f})" for f in figs] + [""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pynx-dir", type=Path, default=Path("/work/bench"))
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--figures", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller quality set (2 objects x 2 photon levels)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["timing", "batch", "quality"],
                    help="sections not measured again (timing and batch are then read from the .json sidecar)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="seeds of our random starts in the quality test (the table shows the first)")
    ap.add_argument("--size", type=int, default=128, help="pattern size of the quality test (objects scale with it)")
    ap.add_argument("--stop", type=float, default=None, help="beam-stop radius in pixels (default: size / 64)")
    ap.add_argument("--photons", type=float, nargs="+", default=None, help="photon levels (default 1e6 1e7 1e8 1e9)")
    ap.add_argument("--objects", choices=list(OBJECTS_DESCRIPTION), default="test",
                    help="quality objects: the package's test objects, or a held-out set of pictures bundled with "
                         "scikit-image (found in the PyNX venv; benchmarks/picture_objects.py)")
    ap.add_argument("--positivity", choices=["false", "true", "auto"], default="auto",
                    help="our runs' positivity (auto, the phase_retriever's default: half the starts positive, the "
                         "data choose per pattern; false: every start complex, as before 2026-11-27 14:27 UTC)")
    ap.add_argument("--our-starts", type=int, default=None, help="our random starts per pattern (default: PyNX's 10)")
    args = ap.parse_args(argv)
    pynx = PyNX(args.pynx_dir)
    # Skipped sections are taken from the JSON written beside the markdown by an earlier run.
    sidecar = args.markdown.with_suffix(".json") if args.markdown else None
    previous = json.loads(sidecar.read_text()) if sidecar and sidecar.exists() else {}
    missing = [section for section in ("timing", "batch") if section in args.skip and not previous.get(section)]
    if missing:
        sys.exit(f"error: --skip {' '.join(missing)} reuses an earlier run's figures from {sidecar}, which has none: "
                 "run those sections once, or put the markdown beside the JSON of an earlier run")
    timing = bench_timing(pynx, (256, 512), args.repeats, args.workers) if "timing" not in args.skip else previous.get("timing", [])
    batch = bench_batch(pynx, 64, 256, 20, args.workers, args.repeats) if "batch" not in args.skip else previous.get("batch")
    if sidecar:
        sidecar.write_text(json.dumps({"timing": timing, "batch": batch}, indent=1))
    if "quality" not in args.skip:
        pictures, picture_dir = quality_objects(args.objects, args.pynx_dir)
        kinds = pictures or QUALITY_KINDS
        kinds = kinds[:2] if args.quick else kinds
        photons = args.photons or ((1e6, 1e8) if args.quick else QUALITY_PHOTONS)
        stop = args.stop if args.stop is not None else args.size / 64
        positivity = {"false": False, "true": True, "auto": "auto"}[args.positivity]
        quality = bench_quality(pynx, kinds, tuple(photons), args.size, 10, stop, tuple(args.seeds), picture_dir,
                                positivity, args.our_starts, args.objects)
    else:
        quality = None
    figs = figures(quality, args.figures) if (args.figures and quality) else []
    if args.markdown and timing and batch and quality:
        args.markdown.write_text(markdown(args, timing, batch, quality, figs))
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
