"""Stage discovery through the ``xfel_dl_plugins.stages`` entry-point group.

Built-in stages are registered in this package's ``pyproject.toml`` exactly as a third-party
package registers its own; nothing here knows about particular stages.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from ..errors import StageError
from .base import STAGE_KINDS, Stage

ENTRY_POINT_GROUP = "xfel_dl_plugins.stages"


@lru_cache(maxsize=1)
def stage_entry_points() -> dict[str, EntryPoint]:
    """All registered stages by name (nothing imported yet)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_stage(name: str) -> type[Stage]:
    """Import and check the stage class registered as ``name``."""
    eps = stage_entry_points()
    if name not in eps:
        raise StageError(f"unknown stage '{name}' (installed: {', '.join(sorted(eps)) or 'none'})")
    ep = eps[name]
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not look like a missing one
        raise StageError(f"stage '{name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise StageError(f"stage '{name}' ({ep.value}) is not a subclass of xfel_dl_plugins.Stage")
    if cls.kind not in STAGE_KINDS:
        raise StageError(f"stage '{name}' declares kind {cls.kind!r}, expected one of {list(STAGE_KINDS)}")
    return cls


def describe_stage(name: str) -> str:
    """Multi-line human description: kind, devices, inputs, outputs, parameters."""
    cls = load_stage(name)
    ep = stage_entry_points()[name]
    lines = [f"{name}  [{cls.kind}]  devices: {', '.join(cls.devices)}  ({ep.value})"]
    if cls.description:
        lines.append(f"    {cls.description}")
    lines.append(f"    inputs:  {', '.join(cls.inputs) or '-'}")
    for f in cls.outputs:
        lines.append(f"    output   {f.describe()}")
    if cls.filter_field:
        lines.append(f"    filter:  keeps frames where '{cls.filter_field}' is true (set filter = true)")
    for pname, spec in cls.params.items():
        lines.append(f"    param    {pname}: {spec.describe()}")
    return "\n".join(lines)
