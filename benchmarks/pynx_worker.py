"""PyNX side of bench_phasing.py (runs in the PyNX benchmark venv, never imported by the package).

    python pynx_worker.py TASK IN.npz OUT.npz

Tasks:
  timing   : ``iobs``, ``valid``, ``n_iter``  -> seconds per iteration of ER, HIO, RAAR (calc_llk off)
  batch    : ``iobs`` (n, ny, nx), ``valid``, ``n_iter`` -> seconds for HIO**n_iter on each pattern, one by one
  quality  : ``iobs`` (n, ny, nx), ``valid``, ``n_starts``, ``seed``, ``sw_threshold``, ``sw_method``,
             ``sw_sigma`` (start, end), ``sw_raar_scale`` (the RAAR stage's threshold factor)
             -> final objects (n, n_starts, ny, nx) of the benchmark schedule
             from PyNX's own random starts (autocorrelation support, random object).
Arrays are FFT-centred (PyNX's convention too). PyNX runs on the CPU (PYNX_PU=cpu).
"""

import os
import sys
import time

os.environ.setdefault("PYNX_PU", "cpu")

import numpy as np  # noqa: E402
from pynx.cdi import CDI, ER, HIO, RAAR, AutoCorrelationSupport, InitObjRandom, ScaleObj, SupportUpdate  # noqa: E402


def _cdi(iobs, valid):
    return CDI(np.asarray(iobs, np.float32).copy(), mask=(~valid).astype(np.int8))


def _start(iobs, valid):
    cdi = _cdi(iobs, valid)
    cdi = AutoCorrelationSupport(threshold=(0.09, 0.11)) * cdi  # PyNX runner default range
    cdi = InitObjRandom(src="support", amin=0, amax=1, phirange=2 * np.pi) * cdi
    return ScaleObj() * cdi


def timing(d):
    n = int(d["n_iter"])
    out = {}
    for name, op in (("er", ER), ("hio", HIO), ("raar", RAAR)):
        cdi = _start(d["iobs"], d["valid"])
        cdi = op(calc_llk=0) ** 5 * cdi  # warm-up
        t0 = time.perf_counter()
        cdi = op(calc_llk=0) ** n * cdi
        out[name] = (time.perf_counter() - t0) / n
    return out


def batch(d):
    n = int(d["n_iter"])
    cdis = [_start(i, v) for i, v in zip(d["iobs"], d["valid"])]
    cdis[0] = HIO(calc_llk=0) ** 5 * cdis[0]
    t0 = time.perf_counter()
    for cdi in cdis:
        HIO(calc_llk=0) ** n * cdi
    return {"seconds": time.perf_counter() - t0}


def quality(d):
    """(SW*HIO**50)**12 * (SW(scale)*RAAR**50)**8 * ER**100 with the given shrink-wrap parameters."""
    np.random.seed(int(d["seed"]))
    threshold, method = float(d["sw_threshold"]), str(d["sw_method"])
    smooth = tuple(float(v) for v in d["sw_sigma"]) + (500,)
    raar_scale = float(d["sw_raar_scale"]) if "sw_raar_scale" in d else 1.0
    objects, seconds = [], []
    for iobs, valid in zip(d["iobs"], d["valid"]):
        row = []
        for _ in range(int(d["n_starts"])):
            t0 = time.perf_counter()
            sup = SupportUpdate(threshold_relative=threshold, smooth_width=smooth, method=method)
            sup_raar = SupportUpdate(threshold_relative=threshold * raar_scale, smooth_width=smooth, method=method)
            try:
                cdi = _start(iobs, valid)
                cdi = ER() ** 100 * (sup_raar * RAAR() ** 50) ** 8 * (sup * HIO() ** 50) ** 12 * cdi
                row.append(cdi.get_obj())
            except Exception as exc:  # SupportTooLarge/Small: a failed start
                print(f"PyNX start failed: {type(exc).__name__}: {str(exc)[:80]}", file=sys.stderr)
                row.append(np.zeros(iobs.shape, np.complex64))
            seconds.append(time.perf_counter() - t0)
        objects.append(row)
    return {"objects": np.asarray(objects, np.complex64), "seconds": np.asarray(seconds)}


if __name__ == "__main__":
    task, src, dst = sys.argv[1:4]
    data = dict(np.load(src))
    np.savez(dst, **{"task": task, **{"result_" + k: v for k, v in globals()[task](data).items()}})
