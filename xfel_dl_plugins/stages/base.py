"""The stage contract shared by every kind of processing stage.

A stage is a class registered under the entry-point group ``xfel_dl_plugins.stages``. Its class
attributes describe it completely (kind, parameters, per-frame inputs and outputs, filter, devices),
so the host can list and validate stages without running them. Modules that define stages must not
import torch or cupy at module level: import them inside :meth:`Stage.setup` or :meth:`Stage.process`.

At run time the host creates one instance per chain step with validated parameters, calls
:meth:`Stage.setup` once, then :meth:`Stage.process` once per batch of frames, and
:meth:`Stage.finish` and :meth:`Stage.warnings` at the end of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from ..errors import StageError

#: The kinds of stage the host knows; a stage declares one of them.
STAGE_KINDS = (
    "preprocessing",
    "hit_finder",
    "classifier",
    "denoiser",
    "phase_retriever",
    "orientation",
    "size_shape",
)

#: Per-frame fields every input source provides (see :class:`FrameBatch`).
SOURCE_FIELDS = ("data", "valid", "train_id", "pulse_id", "cell_id")
#: Per-frame fields the host derives on demand from the detector geometry.
ASSEMBLED_FIELDS = ("image", "image_valid")

_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}


@dataclass(frozen=True)
class Param:
    """A declared stage parameter: type, default, unit and allowed range or choices."""

    default: Any
    type: type
    doc: str
    unit: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    also: tuple = ()  # strings accepted besides values of the type (e.g. "auto" for a boolean)

    def validate(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise StageError naming the problem."""
        expected = _TYPE_NAMES.get(self.type, self.type.__name__) + "".join(f" or {v!r}" for v in self.also)
        if value is None and self.default is None:
            return None  # a default of None: the stage chooses (e.g. from the data's size)
        if isinstance(value, str) and value in self.also:
            return value
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise StageError(f"parameter '{name}' must be a {expected}, got {type(value).__name__} {value!r}")
        if self.type is float and not math.isfinite(value):
            raise StageError(f"parameter '{name}' must be finite, got {value!r}")
        if self.choices and value not in self.choices:
            raise StageError(f"parameter '{name}' must be one of {list(self.choices)}, got {value!r}")
        if self.min is not None and value < self.min:
            raise StageError(f"parameter '{name}' must be >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise StageError(f"parameter '{name}' must be <= {self.max}, got {value!r}")
        return value

    def describe(self) -> str:
        unit = f" [{self.unit}]" if self.unit else ""
        extra = f", one of {list(self.choices)}" if self.choices else ""
        kind = _TYPE_NAMES.get(self.type, self.type.__name__) + "".join(f" or {v!r}" for v in self.also)
        return f"{kind} = {self.default!r}{unit}{extra}: {self.doc}"


@dataclass(frozen=True)
class Field:
    """A per-frame array a stage reads or writes.

    ``shape`` is the per-frame shape; an entry may be the name of an integer parameter of the stage
    (e.g. ``("size", "size")``), resolved when the stage is configured. ``saved`` says whether the
    host writes the field into the results file (large intermediate arrays are usually not saved).
    """

    name: str
    dtype: str = "float32"
    shape: tuple = ()
    doc: str = ""
    unit: str = ""
    saved: bool = True

    def resolved_shape(self, params: SimpleNamespace) -> tuple[int, ...]:
        return tuple(int(getattr(params, s)) if isinstance(s, str) else int(s) for s in self.shape)

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.shape) or "scalar"
        unit = f" [{self.unit}]" if self.unit else ""
        return f"{self.name}: {self.dtype} {shape}{unit}" + ("" if self.saved else " (not saved)")


@dataclass
class StageContext:
    """What the host tells a stage about the run: device, experiment geometry, seed."""

    device: str = "cpu"  # "cpu" or "cuda", already resolved from "auto"
    geometry: Any = None  # xfel_dl_plugins.io.geometry.ExperimentGeometry
    seed: int = 0

    @property
    def xp(self):
        """The array module for this device: numpy on the CPU, cupy on CUDA."""
        if self.device == "cuda":
            import cupy

            return cupy
        return np


@dataclass
class FrameBatch:
    """A batch of frames moving through a chain.

    ``fields`` holds per-frame arrays, first axis = frame: the source's ``data`` (detector-native
    layout: ``(n, 16, 512, 128)`` for AGIPD-1M modules, ``(n, H, W)`` for a flat detector), ``valid``
    (bool, True where a pixel may be used), ``train_id``, ``pulse_id``, ``cell_id``, and the outputs
    of earlier stages; names starting with ``_`` are per-batch memos that stages share and that are
    never written (e.g. frames binned onto a model grid). ``meta`` holds run-level objects that stages
    share (e.g. the reciprocal grid).
    """

    fields: dict[str, np.ndarray]
    geometry: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.fields["train_id"])

    def __contains__(self, name: str) -> bool:
        return name in self.fields or (name in ASSEMBLED_FIELDS and self.geometry is not None)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.fields and name in ASSEMBLED_FIELDS:
            self._assemble()
        try:
            return self.fields[name]
        except KeyError:
            have = sorted(f for f in self.fields if not f.startswith("_"))  # "_...": stages' private per-batch memos
            raise StageError(f"no per-frame field '{name}' in this chain (have: {have})") from None

    def _assemble(self) -> None:
        """Assemble detector-native data into 2D images once per batch (cached in ``fields``)."""
        if self.geometry is None:
            raise StageError("this stage needs assembled images but the chain has no detector geometry")
        image, valid = self.geometry.assemble(self.fields["data"], self.fields["valid"])
        self.fields["image"], self.fields["image_valid"] = image, valid

    def subset(self, index: np.ndarray) -> FrameBatch:
        """The frames selected by a boolean mask or integer index (shares ``meta``)."""
        return FrameBatch({k: v[index] for k, v in self.fields.items()}, self.geometry, self.meta)


class Stage:
    """Base class of all stages. Subclasses set the class attributes and implement :meth:`process`."""

    #: Short description shown by ``xfel-dl stages``.
    description: ClassVar[str] = ""
    #: One of :data:`STAGE_KINDS`.
    kind: ClassVar[str] = ""
    #: Declared parameters, validated before the stage is constructed.
    params: ClassVar[dict[str, Param]] = {}
    #: Names of the per-frame fields the stage reads.
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Per-frame fields the stage adds.
    outputs: ClassVar[tuple[Field, ...]] = ()
    #: Name of a boolean output that, when the manifest sets ``filter = true``, keeps frames for later stages.
    filter_field: ClassVar[str | None] = None
    #: Devices the stage can run on.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, context: StageContext | None = None, **params: Any):
        self.context = context or StageContext()
        self.p = self.validate_params(params)

    # -- declaration helpers -------------------------------------------------------------------
    @classmethod
    def validate_params(cls, given: dict[str, Any]) -> SimpleNamespace:
        """Check names and types of ``given`` against :attr:`params`; fill in defaults."""
        unknown = sorted(set(given) - set(cls.params))
        if unknown:
            raise StageError(f"unknown parameter '{unknown[0]}' (known: {', '.join(sorted(cls.params)) or 'none'})")
        values = {name: spec.validate(name, given.get(name, spec.default)) for name, spec in cls.params.items()}
        return SimpleNamespace(**values)

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f.name: f.resolved_shape(self.p) for f in self.outputs}

    # -- run-time hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        """Load weights, plan FFTs, allocate buffers. Called once before the first batch."""

    def process(self, batch: FrameBatch) -> dict[str, Any]:
        """Return a dict with one array per declared output, first axis = frames of ``batch``."""
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Run-level results (scalars or small arrays) recorded in the results file and the report."""
        return {}

    def warnings(self) -> list[str]:
        """What a person should check after the run, one line each; called after :meth:`finish`.
        ``xfel-dl run`` prints them and the results file keeps them with the stage's run values."""
        return []

    def provenance(self) -> dict[str, str]:
        """Extra provenance recorded in the results file, e.g. ``{"weights_sha256": ...}`` for learned stages."""
        return {}
