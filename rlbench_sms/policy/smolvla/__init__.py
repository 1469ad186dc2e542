"""SmolVLA on transformers' SmolVLM, numerically identical to LeRobot's and loading its checkpoints."""

from .checkpoint import CheckpointError, CheckpointKeyError
from .config import PolicyFeature, SmolVLAConfig
from .modeling import TokenGroup, VLAFlowMatching
from .policy import PreparedInputs, SmolVLAPolicy
from .tiny import build_tiny_vlm, make_features, smolvlm2_500m_config, tiny_config

__all__ = ["SmolVLAPolicy", "SmolVLAConfig", "PolicyFeature", "VLAFlowMatching", "TokenGroup", "PreparedInputs",
           "CheckpointError", "CheckpointKeyError", "build_tiny_vlm", "tiny_config", "make_features",
           "smolvlm2_500m_config"]
