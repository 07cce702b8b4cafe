"""Simulation of single-particle imaging data in absolute units: labelled datasets and AGIPD-1M runs."""

from .config import SimulationConfig, load_config
from .detector import Detector, grid_detector, make_detector
from .generate import SimulatedPatterns, Simulator, generate
from .samples import SHAPE_CODES, SHAPE_NAMES
from .writers import simulate_main, write_agipd_run, write_dataset

__all__ = ["Detector", "SHAPE_CODES", "SHAPE_NAMES", "SimulatedPatterns", "SimulationConfig", "Simulator",
           "generate", "grid_detector", "load_config", "make_detector",
           "simulate_main", "write_agipd_run", "write_dataset"]
