"""Policies: our SmolVLA (LeRobot weight- and numerics-compatible), its sensor branches and
feature normalisation."""

from .branches import BranchesConfig, PolicyBranches, branch_input_features, parse_branches, resolve_branches
from .normalization import NormalizationStatsError, Normalizer
from .smolvla import SmolVLAConfig, SmolVLAPolicy

__all__ = ["SmolVLAPolicy", "SmolVLAConfig", "Normalizer", "NormalizationStatsError", "BranchesConfig",
           "PolicyBranches", "parse_branches", "resolve_branches", "branch_input_features"]
