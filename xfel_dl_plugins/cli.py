"""The ``xfel-dl`` command: list stages, run a manifest, run the demo, simulate data, train models.

Heavy modules (EXtra-data, torch, cupy) are imported only by the subcommand that needs them, so
``xfel-dl stages`` answers quickly. Problems with input, manifests or output print one line and exit
with a non-zero status; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import XfelDLError


def cmd_stages(args) -> int:
    from .stages.registry import describe_stage, stage_entry_points

    names = sorted(stage_entry_points())
    if not names:
        print("no stages installed (entry-point group xfel_dl_plugins.stages is empty)")
        return 1
    failed = 0
    for name in names:
        try:
            print(describe_stage(name))
        except XfelDLError as exc:
            print(f"{name}  [failed to load] {exc}")
            failed += 1
        print()
    return 1 if failed else 0


def cmd_run(args) -> int:
    from .pipeline.manifest import apply_overrides, parse_manifest
    from .pipeline.runner import run_chain

    manifest = apply_overrides(parse_manifest(args.manifest), input_path=args.input, output=args.output)
    if args.parts:
        return _run_parts(manifest, args)
    result = run_chain(manifest, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {result.output}: {result.n_frames} frames in {result.n_trains} trains, "
          f"{result.frames_per_s:.1f} frames/s")
    for label, rows in result.stage_rows.items():
        summary = result.stage_summaries.get(label) or {}
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
                          if isinstance(v, (int, float)))
        print(f"  {label}: {rows} frames -> {result.output_sources[label]}" + (f" ({extra})" if extra else ""))
    _print_warnings([result])
    return 0


def _print_warnings(results) -> None:
    """Each stage's warnings, one line each on stderr (parts of a split run: named by their file)."""
    for result in results:
        where = f" ({result.output.name})" if len(results) > 1 else ""
        for label, lines in result.stage_warnings.items():
            for line in lines:
                print(f"xfel-dl: warning: {label}{where}: {line}", file=sys.stderr)


def _run_parts(manifest, args) -> int:
    from pathlib import Path

    from .pipeline.parallel import run_in_parts

    out_dir = Path(manifest.output or manifest.name).with_suffix("")
    results = run_in_parts(manifest, args.parts, out_dir=out_dir, overwrite=args.overwrite,
                           scheduler=args.scheduler)
    frames = sum(r.n_frames for r in results)
    print(f"wrote {len(results)} files to {out_dir}/ ({frames} frames); open them together with "
          f"extra_data.RunDirectory('{out_dir}')")
    _print_warnings(results)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.workdir), progress=not args.quiet, rebuild=args.rebuild, n_frames=args.frames,
             phasing=not args.no_phasing)
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import make_report, print_report

    results = Path(args.results)
    if not results.is_file():
        raise XfelDLError(f"results file not found: {results}")
    out_dir = Path(args.out_dir or results.parent)
    geometry = None
    if args.run:
        from .io.geometry import ExperimentGeometry

        geometry = ExperimentGeometry.for_detector("AGIPD1M", photon_energy_eV=args.photon_energy_eV,
                                                   distance_m=args.distance_m, geometry_file=args.geometry)
    report = make_report(results, out_dir, run_dir=Path(args.run) if args.run else None, geometry=geometry)
    print_report(report)
    return 0


def cmd_simulate(args) -> int:
    from .simulation import simulate_main

    simulate_main(args.config, args.output, progress=not args.quiet, overwrite=args.overwrite, n=args.n,
                  seed=args.seed)
    return 0


def cmd_train(args) -> int:
    from .classification.training import train_from_config

    if args.model != "classifier" and args.model != "embedding":
        raise XfelDLError(f"unknown model {args.model!r}: expected classifier or embedding")
    train_from_config(args.config, args.out_dir, model=args.model)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xfel-dl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stages", help="list installed stages with kind, inputs, outputs and parameters")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("run", help="run a processing chain (manifest TOML)")
    p.add_argument("manifest", help="manifest file, e.g. manifests/spi-hitfinding.toml")
    p.add_argument("--input", help="run directory, CXI file, or karabo-bridge endpoint tcp://host:port (overrides [input])")
    p.add_argument("--output", help="results file (overrides [output] file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--parts", type=int, default=0,
                   help="split the run's trains into N parts run in parallel through Dask; results go to "
                        "a folder named after --output, one file per part")
    p.add_argument("--scheduler", help="Dask scheduler address (e.g. of a SLURMCluster); default: local processes")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="simulate a small AGIPD-1M run, run spi-hitfinding on it, write a report, "
                                    "phase its single hits (spi-phasing)")
    p.add_argument("--workdir", default="xfel-dl-demo", help="where the run, results and report go")
    p.add_argument("--rebuild", action="store_true", help="simulate the run again even if it exists")
    p.add_argument("--frames", type=int, help="simulate this many frames instead of the demo's 320 (with --rebuild)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-phasing", action="store_true", help="stop after hit finding (phasing takes ~2 s per single hit on 2 cores)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="figures and numbers of a results file (hit finding, phase retrieval)")
    p.add_argument("results", help="results file of a chain with a lit-pixel hit finder and/or a phase retriever")
    p.add_argument("--run", help="the run directory, to show the strongest hits as assembled images")
    p.add_argument("--geometry", default="example", help="CrystFEL geometry for the images (default: example)")
    p.add_argument("--photon-energy-eV", type=float, default=6000.0)
    p.add_argument("--distance-m", type=float, default=0.705)
    p.add_argument("--out-dir", help="where report.md and its figures go (default: beside the results)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="write a simulated, labelled dataset (CXI) or AGIPD-1M run")
    p.add_argument("config", help="simulation config TOML (see xfel_dl_plugins/simulation/configs)")
    p.add_argument("--output", required=True, help="CXI file, or run directory for an AGIPD-1M run")
    p.add_argument("--n", type=int, help="number of patterns (default: the config's [output] n_patterns)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's [output] seed)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model from a config (reproduces the shipped weights)")
    p.add_argument("model", help="classifier or embedding")
    p.add_argument("config", help="training config TOML")
    p.add_argument("--out-dir", default=".", help="where weights, sidecar and model card are written")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except XfelDLError as exc:
        if args.debug:
            raise
        print(f"xfel-dl: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xfel-dl: interrupted; no results file was completed", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        print(f"xfel-dl: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
