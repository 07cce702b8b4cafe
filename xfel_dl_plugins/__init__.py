"""xfel_dl_plugins: processing stages for XFEL single-particle imaging, discovered as plugins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xfel_dl_plugins")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .stages.base import Field, FrameBatch, Param, Stage, StageContext  # noqa: E402

__all__ = ["Field", "FrameBatch", "Param", "Stage", "StageContext", "__version__"]
