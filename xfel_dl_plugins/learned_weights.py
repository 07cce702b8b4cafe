"""The one mechanism through which learned stages load their packaged weights.

Weights live in ``xfel_dl_plugins/weights/<name>.safetensors`` (never pickles) beside a sidecar
``<name>.json`` (architecture config, training data config, seed, metrics, sha256 of the weights)
and a model card ``<name>.md``. :func:`load_weights` checks the hash before anything is parsed, so a
corrupted or swapped file is reported instead of silently giving wrong results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WeightsError

WEIGHTS_PACKAGE = "xfel_dl_plugins.weights"


@dataclass(frozen=True)
class LoadedWeights:
    name: str
    tensors: dict[str, np.ndarray]
    config: dict[str, Any]  # the sidecar JSON
    sha256: str
    path: Path


def weights_dir() -> Path:
    return Path(str(resources.files(WEIGHTS_PACKAGE)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(name: str, path: str | Path | None = None) -> LoadedWeights:
    """Load packaged weights ``name`` (or a file at ``path`` with its ``.json`` sidecar) as NumPy arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    wpath = Path(path) if path is not None else weights_dir() / f"{name}.safetensors"
    meta_path = wpath.with_suffix(".json")
    if not wpath.is_file():
        raise WeightsError(f"weights file not found: {wpath}")
    if not meta_path.is_file():
        raise WeightsError(f"weights sidecar not found: {meta_path}")
    try:
        config = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights sidecar {meta_path} is not valid JSON: {exc}") from None
    digest = sha256_of(wpath)
    if config.get("sha256") != digest:
        raise WeightsError(
            f"weights file {wpath} is corrupted or does not match its sidecar "
            f"(sha256 {digest[:12]}…, expected {str(config.get('sha256'))[:12]}…)"
        )
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"weights file {wpath} cannot be read as safetensors: {exc}") from None
    return LoadedWeights(name, tensors, config, digest, wpath)


def save_weights(path: str | Path, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> str:
    """Write ``tensors`` as safetensors and the sidecar JSON with the file's sha256; return the hash."""
    from safetensors.numpy import save_file

    path = Path(path)
    save_file({k: np.require(v, requirements="C") for k, v in tensors.items()}, str(path))  # keeps 0-d shapes
    digest = sha256_of(path)
    path.with_suffix(".json").write_text(json.dumps({**config, "sha256": digest}, indent=2, sort_keys=True) + "\n")
    return digest


def load_into_torch_module(module, weights: LoadedWeights) -> None:
    """Copy ``weights`` into a torch module's state dict; names and shapes must match exactly."""
    import torch

    state = module.state_dict()
    missing = sorted(set(state) - set(weights.tensors))
    extra = sorted(set(weights.tensors) - set(state))
    if missing or extra:
        raise WeightsError(
            f"weights '{weights.name}' do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, value in weights.tensors.items():
        if tuple(state[key].shape) != value.shape:
            raise WeightsError(
                f"weights '{weights.name}': tensor {key} has shape {value.shape}, model expects {tuple(state[key].shape)}"
            )
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.tensors.items()})
