"""Run a processing chain: stream frames from the input, pass them through the stages, write results."""

from __future__ import annotations

import importlib.util
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputDataError, ManifestError, OutputExistsError, StageError, XfelDLError
from ..io.exdf import ExdfWriter
from ..io.geometry import ExperimentGeometry
from ..io.sources import RUN_SOURCES, CXISource
from ..stages.base import FrameBatch, Stage, StageContext
from ..stages.registry import load_stage
from .manifest import GeometrySpec, InputSpec, Manifest

PROVENANCE_SOURCE = "XFELDL/PROVENANCE"


@dataclass
class ChainResult:
    """What a finished run of a chain produced."""

    output: Path
    n_frames: int
    n_trains: int
    elapsed_s: float
    stage_rows: dict[str, int] = field(default_factory=dict)
    stage_summaries: dict[str, dict] = field(default_factory=dict)
    stage_warnings: dict[str, list[str]] = field(default_factory=dict)  # Stage.warnings(), where there are any
    output_sources: dict[str, str] = field(default_factory=dict)
    skipped_frames: int = 0
    filter_passed: dict[str, int] = field(default_factory=dict)  # frames kept by each filtering stage
    geometry: ExperimentGeometry | None = None

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / self.elapsed_s if self.elapsed_s else 0.0


def open_source(spec: InputSpec, collection=None):
    """The manifest's input, or ``collection`` (an open EXtra-data DataCollection) when given."""
    if spec.cxi and collection is None:
        return CXISource(spec.cxi)
    if spec.bridge and collection is None:
        from ..io.bridge import BridgeSource

        return BridgeSource(spec.bridge, source=spec.source, max_trains=spec.max_trains, timeout_s=spec.timeout_s)
    if collection is None and spec.run is None and (spec.proposal is None or spec.run_number is None):
        raise ManifestError("no input: set [input] run, cxi or proposal + run_number, or pass --input")
    reader = RUN_SOURCES[spec.detector if spec.detector in RUN_SOURCES else "AGIPD1M"]
    return reader(spec.run, collection=collection, proposal=spec.proposal, run_number=spec.run_number,
                  data=spec.data, source=spec.source, trains=spec.trains, raw=spec.raw,
                  photons_per_adu=spec.photons_per_adu)


def resolve_geometry(spec: GeometrySpec, info) -> ExperimentGeometry:
    """Manifest values override what the input records; anything still unknown is an error."""

    def value(name: str, key: str):
        v = getattr(spec, key) if getattr(spec, key) is not None else info.recorded.get(key)
        if v is None:
            raise ManifestError(f"{name} unknown: the input does not record it; set [geometry] {key}")
        return v

    energy, distance = value("photon energy", "photon_energy_eV"), value("detector distance", "distance_m")
    if info.detector == "flat":
        return ExperimentGeometry.flat(info.frame_shape, pixel_size_m=value("pixel size", "pixel_size_m"),
                                       photon_energy_eV=energy, distance_m=distance, beam_centre=spec.beam_centre_px)
    return ExperimentGeometry.for_detector(info.detector, photon_energy_eV=energy, distance_m=distance,
                                           geometry_file=spec.file, beam_centre=spec.beam_centre_px)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is usable through CuPy or torch, else 'cpu'."""
    if device == "cpu":
        return "cpu"
    available = False
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            available = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            available = False
    if not available and importlib.util.find_spec("torch") is not None:
        import torch

        available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise XfelDLError("device 'cuda' requested but no CUDA device is usable (no cupy/torch with CUDA)")
    return "cuda" if available else "cpu"


def to_numpy(value: Any) -> np.ndarray:
    """Stage outputs may be NumPy, CuPy or torch arrays: bring them to host memory."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "get") and not isinstance(value, np.ndarray):
        value = value.get()
    return np.asarray(value)


class Chain:
    """The configured stages of a manifest (validated by :func:`parse_manifest`), on their devices."""

    def __init__(self, manifest: Manifest, geometry: ExperimentGeometry, device: str):
        self.steps: list[tuple[Any, Stage]] = []
        for i, spec in enumerate(manifest.stages):
            cls = load_stage(spec.use)
            stage_device = device if device in cls.devices else "cpu"
            context = StageContext(device=stage_device, geometry=geometry, seed=manifest.seed)
            try:
                stage = cls(context, **spec.params)
            except StageError as exc:
                raise ManifestError(f"{manifest.path}: [stages[{i}]] ({spec.use}): {exc}") from None
            self.steps.append((spec, stage))

    def setup(self) -> None:
        for spec, stage in self.steps:
            try:
                stage.setup()
            except XfelDLError:
                raise
            except Exception as exc:
                raise StageError(f"stage '{spec.label}' failed to set up: {type(exc).__name__}: {exc}") from exc


def _check_outputs(spec, stage: Stage, out: dict, n: int) -> dict[str, np.ndarray]:
    shapes = stage.output_shapes()
    checked = {}
    for f in stage.outputs:
        if f.name not in out:
            raise StageError(f"stage '{spec.label}' did not return its declared output '{f.name}'")
        arr = to_numpy(out[f.name])
        if arr.shape != (n,) + shapes[f.name]:
            raise StageError(f"stage '{spec.label}' output '{f.name}' has shape {arr.shape}, "
                             f"declared {(n,) + shapes[f.name]}")
        checked[f.name] = arr.astype(f.dtype, copy=False)
    return checked


def _drop_invalid_frames(batch: FrameBatch, policy: str) -> tuple[FrameBatch, int]:
    """Frames without a single usable pixel (all NaN, all masked) are an error, or skipped if asked."""
    valid = batch["valid"]
    usable = valid.any(axis=tuple(range(1, valid.ndim)))
    if usable.all():
        return batch, 0
    bad = np.flatnonzero(~usable)
    if policy == "error":
        t, p = batch["train_id"][bad[0]], batch["pulse_id"][bad[0]]
        raise InputDataError(f"{len(bad)} frame(s) have no valid pixel (all NaN or masked), first at train {t} "
                             f"pulse {p}; set [chain] on_invalid_frame = \"skip\" to leave them out")
    return batch.subset(usable), len(bad)


def _run_values(summary: dict[str, Any]) -> dict[str, Any]:
    """Stage summaries as RUN values: numbers stay numbers, anything else becomes JSON text."""
    return {k: (v if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                else json.dumps(v, default=str)) for k, v in summary.items()}


def run_chain(manifest: Manifest, *, overwrite: bool = False, progress: bool = True, collection=None) -> ChainResult:
    """Run ``manifest`` end to end (on ``collection`` if given, e.g. the run DAMNIT passes).
    The results file appears only when complete."""
    from tqdm import tqdm

    if manifest.output is None:
        raise ManifestError(f"{manifest.path}: no output file: set [output] file or pass --output")
    output = Path(manifest.output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output file exists: {output} (pass --overwrite to replace it)")
    if not output.parent.is_dir():
        raise XfelDLError(f"output directory does not exist: {output.parent}")

    t0 = time.perf_counter()
    source = open_source(manifest.input, collection)
    try:
        info = source.info
        geometry = resolve_geometry(manifest.geometry, info)
        chain = Chain(manifest, geometry, resolve_device(manifest.device))
        chain.setup()
        prefix = info.detector_source or "XFELDL"
        sources = {spec.label: f"{prefix}/XFELDL/{spec.label.upper()}:output" for spec, _ in chain.steps}
        result = ChainResult(output, 0, 0, 0.0, output_sources=sources, geometry=geometry)
        with ExdfWriter(output, info.train_ids, proposal=info.proposal, run=info.run) as writer:
            bar = tqdm(total=info.n_frames, unit="frame", disable=not progress, desc=manifest.name, smoothing=0.1)
            for fields in source.batches(manifest.batch_size):
                if info.train_ids is None:  # a stream: the file's trains are those received
                    writer.declare_trains(fields["train_id"])
                batch = FrameBatch(fields, geometry)
                batch, skipped = _drop_invalid_frames(batch, manifest.on_invalid_frame)
                result.skipped_frames += skipped
                _process_batch(chain, batch, writer, sources, result)
                result.n_frames += len(fields["train_id"])
                bar.update(len(fields["train_id"]))
                bar.set_postfix(result.filter_passed)
            bar.close()
            for spec, stage in chain.steps:
                result.stage_summaries[spec.label] = summary = stage.finish()
                warnings = stage.warnings()
                if warnings:
                    result.stage_warnings[spec.label] = warnings
                    summary = {**summary, "warnings": warnings}
                if summary:
                    writer.write_run_values(sources[spec.label].split(":")[0], _run_values(summary))
            writer.write_run_values(PROVENANCE_SOURCE, _provenance(manifest, info, geometry, chain, result))
        result.n_trains = len(writer.train_ids)
    finally:
        source.close()
    result.elapsed_s = time.perf_counter() - t0
    return result


def _process_batch(chain: Chain, batch: FrameBatch, writer: ExdfWriter, sources: dict, result: ChainResult) -> None:
    current = batch
    for spec, stage in chain.steps:
        if len(current) == 0:
            break
        try:
            out = stage.process(current)
        except XfelDLError:
            raise
        except Exception as exc:
            tids = current["train_id"]
            raise StageError(f"stage '{spec.label}' failed on trains {tids[0]}–{tids[-1]}: "
                             f"{type(exc).__name__}: {exc}") from exc
        out = _check_outputs(spec, stage, out, len(current))
        current.fields.update(out)
        saved = {f"data.{f.name}": out[f.name] for f in stage.outputs if f.saved}
        saved["data.pulseId"] = current["pulse_id"]
        saved["data.cellId"] = current["cell_id"]
        writer.append_instrument(sources[spec.label], saved, current["train_id"])
        result.stage_rows[spec.label] = result.stage_rows.get(spec.label, 0) + len(current)
        if spec.filter:
            keep = out[stage.filter_field].astype(bool)
            result.filter_passed[f"{spec.label} kept"] = result.filter_passed.get(f"{spec.label} kept", 0) + int(keep.sum())
            current = current.subset(keep)


def _provenance(manifest: Manifest, info, geometry: ExperimentGeometry, chain: Chain, result: ChainResult) -> dict:
    stages = {spec.label: {"stage": spec.use, "params": vars(stage.p), "filter": spec.filter,
                           "device": stage.context.device, **stage.provenance()} for spec, stage in chain.steps}
    return {
        "package": "xfel_dl_plugins",
        "packageVersion": __version__,
        "manifestPath": str(manifest.path),
        "manifest": manifest.text,
        "input": info.description,
        "stages": json.dumps(stages, default=str),
        "photonEnergyEV": float(geometry.photon_energy_eV),
        "detectorDistanceM": float(geometry.distance_m),
        "beamCentrePx": json.dumps(list(geometry.beam_centre)),
        "framesRead": int(result.n_frames),
        "framesSkippedInvalid": int(result.skipped_frames),
        "host": platform.node(),
        "createdUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
