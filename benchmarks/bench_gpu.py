"""GPU benchmark of the phasing engine and the classifier, with the CPU measured in the same run.

    PYTHONPATH=$PWD python benchmarks/bench_gpu.py --json gpu.json --markdown gpu.md [--classifier-frames F.npz]
    PYTHONPATH=$PWD python benchmarks/bench_gpu.py --make-classifier-frames F.npz   # on any machine, first

Needs CuPy with a CUDA device (and a CUDA build of PyTorch for the classifier section). Sections:
  1. memory bandwidth of the card, measured (device-to-device copy, bytes read + written);
  2. phasing iterations (ER/HIO/RAAR, HIO with positivity, DM) on batches of 256^2 and 512^2 patterns and a 3D batch:
     pattern-iterations/s, as a fraction of the bandwidth bound of the field notes (one iteration
     moves ~112 N^2 bytes) and against a bare cuFFT forward + inverse pair on the same batch;
     the CPU backend on the same machine (all cores) for the same batch;
  3. agreement: the same start iterated on CPU and GPU, step by step (relative difference);
  4. classifier throughput on the GPU (frames/s) beside the CPU in the same run, and agreement;
  5. end-to-end phasing throughput: patterns of 256^2, 8 starts each, the default recipe;
  6. quality: the CPU benchmark's 16 patterns phased by ``phase()`` on each device (error after
     removing ambiguities, per pattern, and wall time; last, it is the longest).
Each section is independent: one that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_phasing import QUALITY_KINDS, QUALITY_PHOTONS, RECIPE, _pattern, quality_cases  # noqa: E402  (same test patterns as the CPU benchmark)

from xfel_dl_plugins.phasing import ER, HIO, RAAR, SW, PhasingState, metrics, phase  # noqa: E402
from xfel_dl_plugins.phasing.backend import NumpyBackend, get_backend  # noqa: E402
from xfel_dl_plugins.phasing.defaults import DEFAULT_RECIPE  # noqa: E402

#: (size, batch, ndim, also on the CPU) of the iteration-rate section.
RATE_CASES = [(256, 64, 2, True), (256, 256, 2, False), (256, 1024, 2, False), (512, 256, 2, True), (64, 64, 3, True)]
RATE_CASES_QUICK = [(64, 4, 2, True), (16, 2, 3, True)]

#: Bytes one 2D HIO/RAAR iteration must move per pixel (field notes: ~14 complex64 passes).
BYTES_PER_PIXEL_ITERATION = 112


def gpu_seconds(func, n_calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call, timed with CUDA events after a warm-up."""
    import cupy

    func()
    cupy.cuda.Device().synchronize()
    samples = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(n_calls):
            func()
        stop.record()
        stop.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3 / n_calls)
    return float(np.median(samples))


def measure_bandwidth() -> dict:
    import cupy

    a = cupy.random.standard_normal(1 << 28, dtype=cupy.float32)  # 1 GiB
    b = cupy.empty_like(a)
    seconds = gpu_seconds(lambda: cupy.copyto(b, a), 10)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return dict(device=props["name"].decode(), bytes_per_s=2 * a.nbytes / seconds, copy_gib=a.nbytes / 2**30)


#: The rows of the iteration-rate section: (label, rule, positivity). DM makes two modulus projections
#: per iteration: its fraction of the bound is taken against half the bound.
RATE_RULES = [("ER", "er", False), ("HIO", "hio", False), ("RAAR", "raar", False), ("HIO+positivity", "hio", True),
              ("DM", "dm", False)]


def _batch_state(n: int, batch: int, device, ndim: int = 2, positivity: bool = False) -> PhasingState:
    """``batch`` copies of one test pattern (2D polygon, or 3D blobs), one start each."""
    if ndim == 2:
        iobs, valid, _ = _pattern(n)
    else:
        from xfel_dl_plugins.phasing.testobjects import beam_stop_mask, diffraction, make_object

        rng = np.random.default_rng(0)
        iobs, valid, _ = diffraction(make_object((n,) * 3, "blobs", rng=rng), 1e9, beam_stop_mask((n,) * 3, 1.5), rng)
    return PhasingState(np.repeat(iobs[None], batch, 0), np.repeat(valid[None], batch, 0), n_starts=1, calc_llk=0,
                        backend=device, seed=0, ndim=ndim, positivity=positivity)


def _step(state: PhasingState, rule: str) -> None:
    if rule == "dm":
        state.iterate_dm(0.9)
    else:
        state.iterate(rule, 0.9)


def iteration_rates(cases, bandwidth: float, cpu_workers: int) -> list[dict]:
    """Pattern-iterations/s of each of :data:`RATE_RULES` per (size, batch, ndim), GPU, cuFFT floor and CPU."""
    import cupy
    import cupyx.scipy.fft as cufft

    rows = []
    for n, batch, ndim, with_cpu in cases:
        states = {pos: _batch_state(n, batch, "cuda", ndim, pos) for pos in (False, True)}
        assert states[False].x.dtype == np.complex64, f"GPU iterate is {states[False].x.dtype}, not complex64"
        a = states[False].x.reshape((-1,) + states[False].spatial).copy()  # (arrays, *spatial), as the engine transforms it
        axes = tuple(range(1, 1 + ndim))
        plan = cufft.get_fft_plan(a, axes=axes, value_type="C2C")

        def fft_pair():
            cufft.ifftn(cufft.fftn(a, axes=axes, overwrite_x=True, plan=plan), axes=axes, overwrite_x=True, plan=plan)

        floor = gpu_seconds(fft_pair, 20)
        pixels = n ** ndim
        bound = bandwidth / (BYTES_PER_PIXEL_ITERATION * pixels)
        new_rows = []
        for label, rule, positivity in RATE_RULES:
            state = states[positivity]
            t = gpu_seconds(lambda: _step(state, rule), 20)
            assert state.x.dtype == np.complex64, f"GPU {label} left {state.x.dtype}"
            rule_bound = bound / 2 if rule == "dm" else bound
            new_rows.append(dict(size=n, ndim=ndim, batch=batch, rule=label, gpu_ms=1e3 * t, fft_pair_ms=1e3 * floor,
                                 gpu_pattern_it_per_s=batch / t, bound_pattern_it_per_s=rule_bound,
                                 fraction_of_bound=batch / t / rule_bound, over_fft_floor=t / floor))
        if with_cpu:
            cpu_states = {pos: _batch_state(n, batch, NumpyBackend(ndim, cpu_workers), ndim, pos) for pos in (False, True)}
            for row, (label, rule, positivity) in zip(new_rows, RATE_RULES):
                cpu = cpu_states[positivity]
                _step(cpu, rule)
                t0 = time.perf_counter()
                for _ in range(5):
                    _step(cpu, rule)
                row["cpu_ms"] = 1e3 * (time.perf_counter() - t0) / 5
                row["cpu_pattern_it_per_s"] = batch / (row["cpu_ms"] / 1e3)
                row["gpu_over_cpu"] = row["gpu_pattern_it_per_s"] / row["cpu_pattern_it_per_s"]
            del cpu_states
        del states, a, plan
        cupy.get_default_memory_pool().free_all_blocks()
        for row in new_rows:
            print("rate: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows += new_rows
    return rows


def iterate_agreement() -> dict:
    """CPU and GPU from the same start: each step alone (one ER/HIO/RAAR iteration, one shrink-wrap),
    then 50 iterations with a fixed support. Longer runs are chaotic (rounding differences grow), so
    the end results are compared by their error against the truth instead (``quality``)."""
    iobs, valid, truth = _pattern(128, "complex_blobs", 1e8, seed=4, stop=2.0)
    support = np.abs(truth) > 0.02 * np.abs(truth).max()

    def states(positivity=False):
        return {d: PhasingState(np.stack([iobs, iobs]), np.stack([valid, valid]), n_starts=3, seed=3, backend=d,
                                initial_support=np.stack([support, support]), positivity=positivity)
                for d in ("cpu", "cuda")}

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    out = {}
    for label, rule, positivity in RATE_RULES:
        s = states(positivity)
        for st in s.values():
            _step(st, rule)
        out[f"one_{label.lower().replace('+', '_')}_rel_diff"] = rel(s["cpu"].objects(), s["cuda"].objects())
    s = states()
    for st in s.values():
        (HIO() ** 10).apply(st)
        SW().apply(st)
    out["shrink_wrap_support_pixels_differing"] = int((s["cpu"].supports() != s["cuda"].supports()).sum())
    out["shrink_wrap_support_pixels"] = int(s["cpu"].supports().sum())
    s = states()
    for st in s.values():
        (HIO() ** 20 * RAAR() ** 20 * ER() ** 10).apply(st)
        st.update_llk()
    out["fixed_support_50_rel_diff"] = rel(s["cpu"].objects(), s["cuda"].objects())
    out["fixed_support_50_llk_rel_diff"] = float(np.max(np.abs(s["cpu"].llk - s["cuda"].llk) / np.abs(s["cpu"].llk)))
    print("agreement: " + json.dumps(out), flush=True)
    return out


def quality_agreement(n_starts: int = 10, seed: int = 1) -> dict:
    """The CPU benchmark's 16 quality patterns phased on each device: selected error per pattern and time."""
    cases, iobs, valid, truths = quality_cases(QUALITY_KINDS, QUALITY_PHOTONS, 128, 2.0)
    cases = [f"{kind} {photons:.0e}" for kind, photons in cases]
    res = {"cases": cases}
    for device in ("cuda", "cpu"):
        t0 = time.perf_counter()
        out = phase(iobs, valid, recipe=RECIPE, n_starts=n_starts, n_keep=4, seed=seed, device=device)
        res[f"{device}_s"] = time.perf_counter() - t0
        res[f"{device}_err"] = [float(metrics.ambiguity_error(t, r)) for t, r in zip(truths, out.reconstruction)]
        print(f"quality {device}: {res[f'{device}_s']:.1f} s, errors " + " ".join(f"{e:.3f}" for e in res[f"{device}_err"]),
              flush=True)
    return res


def phasing_throughput(n_patterns: int, n_starts: int, cpu_workers: int) -> dict:
    """Patterns of 256^2 phased per second with the stage's default recipe, GPU and CPU, same patterns."""
    pats = [_pattern(256, ("polygon", "blobs", "complex_blobs")[s % 3], 1e8, seed=200 + s, stop=3.0) for s in range(n_patterns)]
    iobs, valid = np.stack([p[0] for p in pats]), np.stack([p[1] for p in pats])
    res = dict(patterns=n_patterns, size=256, n_starts=n_starts, recipe=DEFAULT_RECIPE)
    phase(iobs[:2], valid[:2], n_starts=2, recipe="HIO**5", device="cuda")  # warm-up: kernels compiled, plans made
    for device, count in (("cuda", n_patterns), ("cpu", max(2, n_patterns // 8))):
        t0 = time.perf_counter()
        backend = NumpyBackend(2, cpu_workers) if device == "cpu" else "cuda"
        out = phase(iobs[:count], valid[:count], n_starts=n_starts, backend=backend)
        seconds = time.perf_counter() - t0
        res[f"{device}_patterns"] = count
        res[f"{device}_s"] = seconds
        res[f"{device}_patterns_per_s"] = count / seconds
        res[f"{device}_err"] = [float(metrics.ambiguity_error(t[2], r)) for t, r in zip(pats, out.reconstruction)]
        print(f"throughput {device}: {count} patterns in {seconds:.1f} s", flush=True)
    res["gpu_over_cpu"] = res["cuda_patterns_per_s"] / res["cpu_patterns_per_s"]
    return res


def classifier_throughput(threads: int, frames_file: Path | None) -> dict:
    """Frames/s of the packaged classifier on the GPU and the CPU, and whether they decide alike.

    ``predict`` end to end as the stage runs it (on the GPU: input built on the device, full float32
    convolutions), and the network alone on input already on the GPU with cuDNN's TF32 on and off.
    Agreement: the probabilities of simulated frames (``frames_file``: patterns, packed valid,
    binning) on both devices."""
    import torch

    from xfel_dl_plugins.classification.inputs import network_input
    from xfel_dl_plugins.classification.runtime import ClassifierModel

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    res = {"threads": threads}
    models = {device: ClassifierModel(device=device) for device in ("cuda", "cpu")}
    size, n = models["cpu"].size, 8192
    frames = (rng.poisson(0.3, (n, size, size)) + rng.normal(0, 0.3, (n, size, size))).astype(np.float32)
    valid = np.ones_like(frames, bool)
    for device, count, batch_size in (("cuda", n, 4096), ("cpu", 1024, 512)):
        models[device].predict(frames[:batch_size], valid[:batch_size], batch_size=batch_size)  # warm-up
        seconds = []
        for _ in range(3):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            models[device].predict(frames[:count], valid[:count], batch_size=batch_size)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        res[f"{device}_predict_frames_per_s"] = count / float(np.median(seconds))
    x = torch.from_numpy(network_input(frames[:4096], valid[:4096])).cuda()
    tf32_default = torch.backends.cudnn.allow_tf32
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32

        def network_only():
            with torch.inference_mode():
                models["cuda"].model(x)
                models["cuda"].model(torch.rot90(x, 1, (-2, -1)))  # the stage's two views
        network_only()
        res[f"cuda_network_only_{'tf32' if tf32 else 'fp32'}_frames_per_s"] = 4096 / gpu_seconds_torch(network_only, 5)
    torch.backends.cudnn.allow_tf32 = tf32_default
    if frames_file is not None:
        with np.load(frames_file) as data:
            patterns, binning = data["patterns"], int(data["binning"])
            real_valid = np.unpackbits(data["valid"], axis=-1, count=patterns.shape[-1]).astype(bool)
        gpu, cpu = (models[d].predict(patterns, real_valid, binning=binning)["probabilities"] for d in ("cuda", "cpu"))
        res["agreement_frames"] = len(patterns)
        res["max_probability_difference"] = float(np.abs(gpu - cpu).max())
        res["decisions_differing"] = int((gpu.argmax(1) != cpu.argmax(1)).sum())
    res["gpu_over_cpu"] = res["cuda_predict_frames_per_s"] / res["cpu_predict_frames_per_s"]
    print("classifier: " + json.dumps(res), flush=True)
    return res


def gpu_seconds_torch(func, n_calls: int) -> float:
    """Mean seconds per call of torch GPU work (synchronised, after the caller's warm-up)."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_calls):
        func()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n_calls


def markdown(r: dict) -> str:
    """The run's numbers as the GPU section of docs/benchmarks.md."""
    nan = float("nan")
    bw = r.get("bandwidth", {})
    lines = [f"Device: {bw.get('device', '?')}; measured copy bandwidth {bw.get('bytes_per_s', nan) / 1e12:.2f} TB/s "
             f"(bytes read + written); CPU columns: the same machine's {r.get('cpu_workers')} cores. Bound = that "
             "bandwidth / (112 bytes x pixels) per pattern-iteration (field notes); half that for DM (two modulus "
             "projections per iteration).", "",
             "| size | batch | rule | GPU ms/it | pattern-it/s | fraction of bound | / cuFFT pair | CPU pattern-it/s | GPU / CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r.get("rates", []):
        shape = "x".join([str(row["size"])] * row["ndim"])
        lines.append(f"| {shape} | {row['batch']} | {row['rule']} | {row['gpu_ms']:.3f} | {row['gpu_pattern_it_per_s']:.3g} | "
                     f"{row['fraction_of_bound']:.2f} | {row['over_fft_floor']:.2f} | "
                     + (f"{row['cpu_pattern_it_per_s']:.3g} | {row['gpu_over_cpu']:.0f} |" if "cpu_pattern_it_per_s" in row
                        else "- | - |"))
    if "agreement" in r:
        a = r["agreement"]
        one = " / ".join(f"{a['one_' + label.lower().replace('+', '_') + '_rel_diff']:.1e}" for label, _, _ in RATE_RULES)
        lines += ["", f"Same start on both devices: one {' / '.join(label for label, _, _ in RATE_RULES)} iteration differs by "
                  f"{one} (relative norm); after 10 HIO and a "
                  f"shrink-wrap, {a['shrink_wrap_support_pixels_differing']} of {a['shrink_wrap_support_pixels']} support "
                  f"pixels differ; after 50 iterations with a fixed support the objects differ by {a['fixed_support_50_rel_diff']:.3f} "
                  "(HIO and RAAR amplify rounding: the results are compared by their error instead, below)."]
    if "quality" in r:
        q = r["quality"]
        lines += ["", f"The 16 quality patterns (10 starts, `{RECIPE}`), selected result's error on each device "
                  f"(GPU {q['cuda_s']:.1f} s, CPU {q['cpu_s']:.1f} s):", "", "| pattern | GPU | CPU |", "|---|---|---|"]
        lines += [f"| {c} | {g:.3f} | {c_:.3f} |" for c, g, c_ in zip(q["cases"], q["cuda_err"], q["cpu_err"])]
    if "throughput" in r:
        t = r["throughput"]
        lines += ["", f"`phase()` end to end, 256^2 patterns, {t['n_starts']} starts each, `{t['recipe']}`: GPU "
                  f"{t['cuda_patterns_per_s']:.2f} patterns/s ({t['cuda_patterns']} in {t['cuda_s']:.1f} s), CPU "
                  f"{t['cpu_patterns_per_s']:.2f} ({t['cpu_patterns']} in {t['cpu_s']:.1f} s): {t['gpu_over_cpu']:.1f}x."]
    if "classifier" in r:
        c = r["classifier"]
        lines += ["", f"Classifier (`predict`, 2 views): GPU {c['cuda_predict_frames_per_s']:.0f} frames/s, CPU "
                  f"({c['threads']} threads) {c['cpu_predict_frames_per_s']:.0f}: {c['gpu_over_cpu']:.1f}x. Network alone on "
                  f"the GPU: {c['cuda_network_only_fp32_frames_per_s']:.0f} frames/s in float32, "
                  f"{c['cuda_network_only_tf32_frames_per_s']:.0f} with TF32."]
        if "agreement_frames" in c:
            lines[-1] += (f" On {c['agreement_frames']} simulated frames the probabilities of the two devices differ by at most "
                          f"{c['max_probability_difference']:.1e}; {c['decisions_differing']} decisions differ.")
    return "\n".join(lines) + "\n"


def write_classifier_frames(path: Path, n: int = 512) -> None:
    """The first ``n`` frames of the classifier's ``pr772_realistic`` test set, binned onto its grid as
    the stage bins them, for ``--classifier-frames`` (made on any machine: the simulation is cached)."""
    from eval_classifier import TEST_SETS, load_test_set

    from xfel_dl_plugins.classification.runtime import ClassifierModel

    _, _, _, binning, frames = load_test_set(TEST_SETS["pr772_realistic"], 5000, ClassifierModel().grid)
    np.savez_compressed(path, patterns=frames.patterns[:n].astype(np.float32), binning=binning,
                        valid=np.packbits(frames.valid[:n], axis=-1))
    print(f"wrote {path}: {n} frames, binning {binning}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--make-classifier-frames", type=Path, metavar="NPZ",
                    help="only write the frames for --classifier-frames (any machine; simulates them if not cached)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--only", nargs="*", default=None,
                    choices=["bandwidth", "rates", "agreement", "quality", "throughput", "classifier"])
    ap.add_argument("--cpu-workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
    ap.add_argument("--classifier-frames", type=Path, default=None,
                    help="npz of simulated frames on the classifier grid (patterns, packed valid, binning)")
    args = ap.parse_args(argv)
    if args.make_classifier_frames:
        write_classifier_frames(args.make_classifier_frames)
        return 0
    if args.json is None:
        ap.error("--json is required")
    get_backend("cuda")  # a clear error when there is no GPU
    wanted = set(args.only or ["bandwidth", "rates", "agreement", "quality", "throughput", "classifier"])
    results, failed = {"cpu_workers": args.cpu_workers}, []
    sections = [
        ("bandwidth", lambda: measure_bandwidth()),
        ("rates", lambda: iteration_rates(RATE_CASES_QUICK if args.quick else RATE_CASES,
                                          results.get("bandwidth", {}).get("bytes_per_s", 3.0e12), args.cpu_workers)),
        ("agreement", iterate_agreement),
        ("classifier", lambda: classifier_throughput(args.cpu_workers, args.classifier_frames)),
        ("throughput", lambda: phasing_throughput(8 if args.quick else 32, 8, args.cpu_workers)),
        ("quality", quality_agreement),
    ]
    for name, func in sections:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = func()
        except Exception:
            failed.append(name)
            results[name + "_error"] = traceback.format_exc()
            print(f"section {name} FAILED:\n{traceback.format_exc()}", flush=True)
        print(f"section {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))  # kept even if a later section dies
    if args.markdown:
        args.markdown.write_text(markdown(results))
    print(markdown(results))
    if failed:
        print("failed sections: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
