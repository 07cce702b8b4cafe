"""Recipe variants against PyNX's best start, many draws per pattern in one batch (a GPU's sweep).

Each set's patterns are repeated ``--replicas`` times in one ``phase()`` call, so every copy gets its
own random starts: R independent draws of the selected result per pattern for the price of one
large batch. PyNX's best start per pattern comes from ``selection_trials.py pynx-best`` (sets' stop)
or ``gap_quality.py --layout none --beam-stop 4`` (its cache), read from ``--pynx``:

  PYTHONPATH=$PWD python3 benchmarks/recipe_sweep.py --pynx DIR --replicas 6 --device cuda \
      --variants nochoice base --json sweep.json

An exploration tool: it adopts nothing. The figures of 2026-11-28: docs/benchmarks.md, "GPU".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gap_quality  # noqa: E402
from bench_phasing import without_oss  # noqa: E402

from xfel_dl_plugins.phasing import metrics, phase  # noqa: E402
from xfel_dl_plugins.phasing.defaults import DEFAULT_RECIPE, POLISH_STAGE, SHARP_FINAL_STAGE, SINGLE_FINAL_RECIPE  # noqa: E402


def _last_replaced(recipe: str, old: str, new: str) -> str:
    head, found, tail = recipe.rpartition(old)
    if not found:
        raise SystemExit(f"recipe_sweep: {old!r} not in the default recipe {recipe!r}")
    return head + new + tail


def _second_generation_edited(recipe: str, old: str, new: str) -> str:
    """``recipe`` with every ``old`` after its GUIDE replaced by ``new`` (both branches of a choice)."""
    head, guide, tail = recipe.partition("GUIDE")
    if old not in tail:
        raise SystemExit(f"recipe_sweep: {old!r} not after the GUIDE of {recipe!r}")
    return head + guide + tail.replace(old, new)


#: name -> recipe; each changes one thing of the default (``tight2``: of ``nochoice``; ``runs2``: phase's options).
VARIANTS = {
    "base": DEFAULT_RECIPE,
    # the default until 2026-11-28: one final stage, no choice of the sharper edge
    "nochoice": SINGLE_FINAL_RECIPE,
    "oss2": _last_replaced(DEFAULT_RECIPE, "GUIDE * (SW*HIO**50)", "GUIDE * (SW*(HIO*OSS)**50)"),
    "nooss": without_oss(DEFAULT_RECIPE),
    "er300": _second_generation_edited(DEFAULT_RECIPE, "ER**100", "ER**300"),
    "tight2": _last_replaced(SINGLE_FINAL_RECIPE, "(SW(scale=0.67)*RAAR**50)**4", "(SW*RAAR**50)**4"),
    # the choice's sharp branch at the RAAR stage's 0.67 x threshold (judged twice on the CPU, not adopted)
    "finechoice": _last_replaced(DEFAULT_RECIPE, SHARP_FINAL_STAGE,
                                 "(SW(scale=0.67,smooth=0.5,decay=1)*RAAR**50)**4 * ER**100"),
    # the default until 2026-11-28 (session 31): no last choice of a polish within a grown support
    "nogrow": DEFAULT_RECIPE.removesuffix(f" * {POLISH_STAGE}"),
    # the default recipe run twice from independent starts, per pattern the lower BIC (phase(n_runs=2))
    "runs2": DEFAULT_RECIPE,
}
#: name -> other phase() options of a variant
PHASE_OPTIONS = {"runs2": dict(n_runs=2)}
#: (size, object offset, beam-stop radius or None for the sets' own); PyNX caches named as their scripts name them.
SETS = {"128:0": (128, 0, None), "128:1000": (128, 1000, None), "128:2000": (128, 2000, None),
        "256:0": (256, 0, None), "256:1000": (256, 1000, None), "128:0:4": (128, 0, 4.0),
        "128:1000:4": (128, 1000, 4.0), "128:2000:4": (128, 2000, 4.0)}


def pynx_best(folder: Path, size: int, offset: int, stop: float | None) -> np.ndarray:
    """PyNX's best-start errors of a set: selection_trials' file for the sets' stop, gap_quality's cache else."""
    name = f"{size}_o{offset}" if stop is None else gap_quality.run_name(size, offset, "none", 0, stop=stop)
    path = folder / f"pynx_best_{name}.npy"
    if not path.exists():
        raise SystemExit(f"recipe_sweep: {path} not found (selection_trials.py pynx-best or gap_quality.py make it)")
    return np.load(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pynx", type=Path, required=True, help="folder of PyNX's best-start errors (.npy)")
    ap.add_argument("--replicas", type=int, default=6, help="draws per pattern, batched (default 6)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--starts", type=int, default=10, help="random starts per pattern (PyNX's best is of 10)")
    ap.add_argument("--seed", type=int, default=700)
    ap.add_argument("--json", type=Path, required=True, help="written after every run")
    args = ap.parse_args(argv)
    res = {"device": args.device, "replicas": args.replicas, "starts": args.starts,
           "recipes": {v: VARIANTS[v] for v in args.variants}}
    for key in args.sets:  # each set's patterns made and PyNX's errors read once, for every variant
        size, offset, stop = SETS[key]
        iobs, valid, truths = gap_quality.gapped_patterns(size, offset, "none", 3, 0.0, stop)
        best = pynx_best(args.pynx, size, offset, stop)
        copies = np.tile(iobs, (args.replicas, 1, 1)), np.tile(valid, (args.replicas, 1, 1))
        for name in args.variants:
            t0 = time.perf_counter()
            out = phase(*copies, recipe=VARIANTS[name], n_starts=args.starts, n_keep=4, seed=args.seed + offset + size,
                        device=args.device, positivity="auto", **PHASE_OPTIONS.get(name, {}))
            seconds = time.perf_counter() - t0
            err = np.array([metrics.ambiguity_error(truths[i % len(truths)], x)
                            for i, x in enumerate(out.reconstruction)]).reshape(args.replicas, len(truths))
            ok = err <= best[None] + 1e-9
            res[f"{name}|{key}"] = dict(err=err.tolist(), best=best.tolist(), seconds=seconds)
            print(f"{name:7s} {key:11s} {seconds:6.1f} s  draws with every pattern at or below PyNX's best "
                  f"{int(ok.all(1).sum())}/{args.replicas}, pattern-draws {int(ok.sum())}/{ok.size}, "
                  f"mean error {err.mean():.3f}", flush=True)
            args.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
