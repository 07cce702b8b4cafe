"""Processing-chain manifests (TOML): parsing and validation with errors that name file, key and expectation."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import ManifestError, StageError
from ..stages.registry import load_stage

DEVICES = ("cpu", "cuda", "auto")
DETECTORS = ("AGIPD1M", "flat")


@dataclass
class InputSpec:
    run: str | None = None
    proposal: int | None = None
    run_number: int | None = None
    data: str = "proc"
    cxi: str | None = None
    detector: str = "AGIPD1M"
    source: str | None = None
    trains: tuple[int, int] | None = None
    raw: bool | None = None
    photons_per_adu: float = 1.0
    bridge: str | None = None  # karabo-bridge endpoint, e.g. tcp://exflong:45000
    max_trains: int | None = None  # stop a stream after this many trains
    timeout_s: float = 30.0  # stop a stream after this long without data


@dataclass
class GeometrySpec:
    file: str | None = None
    photon_energy_eV: float | None = None
    distance_m: float | None = None
    pixel_size_m: float | None = None
    beam_centre_px: tuple[float, float] | None = None


@dataclass
class StageSpec:
    use: str
    label: str
    params: dict[str, Any]
    filter: bool = False


@dataclass
class Manifest:
    path: Path
    text: str
    name: str
    description: str
    device: str
    batch_size: int
    seed: int
    on_invalid_frame: str
    input: InputSpec
    geometry: GeometrySpec
    stages: list[StageSpec] = field(default_factory=list)
    output: str | None = None


class _Table:
    """A TOML table being validated: typed getters that raise ManifestError naming file and key."""

    def __init__(self, path: Path, prefix: str, data: Any):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            self.fail("", f"a table, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def fail(self, key: str, expected: str):
        where = f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key or "(top level)")
        raise ManifestError(f"{self.path}: [{where}]: expected {expected}")

    def get(self, key: str, types, default=None, *, required=False, choices=None):
        self.used.add(key)
        if key not in self.data:
            if required:
                self.fail(key, "a value (missing)")
            return default
        value = self.data[key]
        if isinstance(types, tuple) and float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            self.fail(key, f"{names}, got {type(value).__name__} {value!r}")
        if choices and value not in choices:
            self.fail(key, f"one of {list(choices)}, got {value!r}")
        return value

    def pair(self, key: str, types):
        value = self.get(key, list)
        if value is None:
            return None
        if len(value) != 2 or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
            self.fail(key, f"a list of two numbers, got {value!r}")
        return tuple(value)

    def check_unknown(self):
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail(unknown[0], f"no key '{unknown[0]}' here (known: {', '.join(sorted(self.used))})")


def parse_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; every stage name and parameter is checked against the registry."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None

    top = _Table(path, "", doc)
    chain = _Table(path, "chain", top.get("chain", dict, {}))
    inp = _Table(path, "input", top.get("input", dict, {}))
    geo = _Table(path, "geometry", top.get("geometry", dict, {}))
    out = _Table(path, "output", top.get("output", dict, {}))
    stages_raw = top.get("stages", list, required=True)
    top.check_unknown()

    manifest = Manifest(
        path=path,
        text=text,
        name=chain.get("name", str, path.stem),
        description=chain.get("description", str, ""),
        device=chain.get("device", str, "auto", choices=DEVICES),
        batch_size=chain.get("batch_size", int, 32),
        seed=chain.get("seed", int, 0),
        on_invalid_frame=chain.get("on_invalid_frame", str, "error", choices=("error", "skip")),
        input=InputSpec(
            run=inp.get("run", str),
            proposal=inp.get("proposal", int),
            run_number=inp.get("run_number", int),
            data=inp.get("data", str, "proc", choices=("raw", "proc", "all")),
            cxi=inp.get("cxi", str),
            detector=inp.get("detector", str, "AGIPD1M", choices=DETECTORS),
            source=inp.get("source", str),
            trains=inp.pair("trains", int),
            raw=inp.get("raw", bool),
            photons_per_adu=inp.get("photons_per_adu", (float,), 1.0),
            bridge=inp.get("bridge", str),
            max_trains=inp.get("max_trains", int),
            timeout_s=inp.get("timeout_s", (float,), 30.0),
        ),
        geometry=GeometrySpec(
            file=geo.get("file", str),
            photon_energy_eV=geo.get("photon_energy_eV", (float,)),
            distance_m=geo.get("distance_m", (float,)),
            pixel_size_m=geo.get("pixel_size_m", (float,)),
            beam_centre_px=geo.pair("beam_centre_px", (int, float)),
        ),
        output=out.get("file", str),
    )
    for table in (chain, inp, geo, out):
        table.check_unknown()
    if manifest.batch_size < 1:
        chain.fail("batch_size", "a positive integer")
    for key in ("photon_energy_eV", "distance_m", "pixel_size_m"):
        value = getattr(manifest.geometry, key)
        if value is not None and not value > 0:
            geo.fail(key, f"a positive number, got {value!r}")
    if not stages_raw:
        top.fail("stages", "at least one [[stages]] entry")
    labels: set[str] = set()
    for i, raw in enumerate(stages_raw):
        st = _Table(path, f"stages[{i}]", raw)
        use = st.get("use", str, required=True)
        spec = StageSpec(use=use, label=st.get("label", str, use), params=st.get("params", dict, {}),
                         filter=st.get("filter", bool, False))
        st.check_unknown()
        if spec.label in labels:
            st.fail("label", f"a label not used by another stage, got {spec.label!r}")
        labels.add(spec.label)
        try:
            cls = load_stage(use)
            cls.validate_params(spec.params)
        except StageError as exc:
            raise ManifestError(f"{path}: [stages[{i}]] ({use}): {exc}") from None
        if spec.filter and not cls.filter_field:
            st.fail("filter", f"false: stage '{use}' cannot filter frames")
        manifest.stages.append(spec)
    return manifest


def apply_overrides(manifest: Manifest, *, input_path: str | None = None, output: str | None = None) -> Manifest:
    """Command-line ``--input``/``--output`` replace the manifest's: a ``.cxi`` file is a CXI input,
    ``tcp://host:port`` a karabo-bridge stream, anything else a run directory or file."""
    if input_path is not None:
        is_cxi = Path(input_path).suffix.lower() == ".cxi"
        is_stream = input_path.startswith("tcp://")
        manifest.input.run, manifest.input.cxi, manifest.input.bridge = (
            (None, None, input_path) if is_stream else (None, input_path, None) if is_cxi else (input_path, None, None))
        manifest.input.proposal = manifest.input.run_number = None
        if is_cxi:
            manifest.input.detector = "flat"
        elif manifest.input.detector == "flat":
            manifest.input.detector = "AGIPD1M"
    if output is not None:
        manifest.output = output
    return manifest
