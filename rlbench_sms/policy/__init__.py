"""Policies: our SmolVLA (LeRobot weight- and numerics-compatible) and feature normalisation."""

from .normalization import NormalizationStatsError, Normalizer
from .smolvla import SmolVLAConfig, SmolVLAPolicy

__all__ = ["SmolVLAPolicy", "SmolVLAConfig", "Normalizer", "NormalizationStatsError"]
