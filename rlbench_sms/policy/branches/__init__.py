"""Optional sensor branches of our SmolVLA: depth, force and object tip.

A branch spec is a plain dict (from Hydra, saved as ``branches.json`` next to a checkpoint's
``config.json``); :func:`parse_branches` reads it, :func:`branch_input_features` says which policy
input features the branches read, :class:`PolicyBranches` holds the branch modules of a policy.
"""

from .config import (BRANCH_TYPES, BranchesConfig, BranchSpec, DepthAsImage, DepthCNN, ForceMLP, ForceState,
                     TipText, TipToken, parse_branches)
from .features import branch_input_features, resolve_branches
from .runtime import PolicyBranches

__all__ = ["BranchesConfig", "BranchSpec", "DepthAsImage", "DepthCNN", "ForceMLP", "ForceState", "TipText",
           "TipToken", "BRANCH_TYPES", "parse_branches", "resolve_branches", "branch_input_features",
           "PolicyBranches"]
