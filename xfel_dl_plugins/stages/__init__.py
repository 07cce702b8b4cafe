"""Processing stages: the contract (:mod:`.base`), discovery (:mod:`.registry`) and built-in stages."""

from .base import Field, FrameBatch, Param, Stage, StageContext

__all__ = ["Field", "FrameBatch", "Param", "Stage", "StageContext"]
