"""Ready-made DAMNIT variables: import them into a DAMNIT ``context.py``.

```python
# context.py
from xfel_dl_plugins.integrations.damnit import spi_hit_rate, spi_hits_file  # noqa: F401
```

DAMNIT collects every ``Variable`` in the context file's namespace; these run after the calibration
pipeline (``data="proc"``) in a SLURM job (``cluster=True``). ``damnit_ctx`` exists only inside
DAMNIT's runner, so outside it this module still imports and :func:`process_run` works on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..pipeline.manifest import apply_overrides, parse_manifest
from ..pipeline.runner import ChainResult, run_chain

try:  # only importable inside DAMNIT's context runner
    from damnit_ctx import Variable
except ImportError:  # pragma: no cover - exercised where DAMNIT is not installed
    Variable = None


def results_path(proposal: int, run_number: int, manifest_name: str) -> Path:
    """Where per-run results go: ``$XFEL_DL_RESULTS`` or the proposal's scratch folder."""
    root = os.environ.get("XFEL_DL_RESULTS") or f"/gpfs/exfel/exp/SPB/p{proposal:06d}/scratch/xfel_dl"
    return Path(root) / f"{Path(manifest_name).stem}-r{run_number:04d}.h5"


def process_run(run, manifest: str | Path, output: str | Path, *, overwrite: bool = True) -> ChainResult:
    """Run a manifest (a path, or the name of a shipped one) on an open run; return the result."""
    from ..demo import packaged_manifest

    path = Path(manifest)
    if not path.is_file():
        path = packaged_manifest(path.name if path.suffix else f"{path.name}.toml")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    chain = apply_overrides(parse_manifest(path), output=str(output))
    return run_chain(chain, overwrite=overwrite, progress=False, collection=run)


if Variable is not None:  # pragma: no cover

    @Variable(title="SPI hits file", data="proc", cluster=True,
              description="spi-hitfinding results (EXDF) written beside the run")
    def spi_hits_file(run, proposal: "meta#proposal", run_number: "meta#run_number"):
        result = process_run(run, "spi-hitfinding", results_path(proposal, run_number, "spi-hitfinding"))
        return str(result.output)

    @Variable(title="SPI hit rate", data="proc", summary="mean",
              description="fraction of frames the lit-pixel hit finder calls hits")
    def spi_hit_rate(run, hits_file: "var#spi_hits_file"):
        import extra_data

        return extra_data.H5File(hits_file).get_run_value("SPB_DET_AGIPD1M-1/XFELDL/HITFINDER", "hit_rate")
