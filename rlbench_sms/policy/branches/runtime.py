"""PolicyBranches: the branch modules of a SmolVLA policy and the three hooks its input
preparation calls.

``SmolVLAPolicy.prepare_inputs`` runs, in order:

1. :meth:`PolicyBranches.before_normalization` on the raw batch: tip ``text`` rewrites ``task``
   (before tokenisation), depth ``as_image`` turns each depth stream into a 3-channel image
   (so the camera code resizes and maps it like any camera);
2. the normaliser (force and tip position are STATE features: MEAN_STD with checkpoint stats);
3. :meth:`PolicyBranches.extend_state` (force ``state``) before the state is padded to 32;
4. :meth:`PolicyBranches.token_groups`: depth ``cnn``, force ``mlp`` and tip ``token`` give
   prefix token groups (ar 0: inside the image/language block, before the state token),
   in the order depth, force, tip.

The module is an ``nn.ModuleDict`` keyed by kind, holding only branches with parameters, so an
all-off policy has no ``branches.*`` tensors at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rlbench_sms.features import FORCE, TIP_POSITION, TIP_VALID

from ..smolvla.config import SmolVLAConfig
from ..smolvla.modeling import TokenGroup
from ..smolvla.preprocess import LANG_TOKENS
from .config import BranchesConfig, BranchSpec, DepthAsImage, DepthCNN, ForceMLP, ForceState, TipText, TipToken
from .depth import DepthEncoder, depth_as_image
from .force import FORCE_IS_PAD, ForceEncoder, append_force_to_state
from .tip import TipEncoder, tip_text


def _input_feature(config: SmolVLAConfig, spec: BranchSpec, key: str, types: tuple[str, ...]):
    feature = config.input_features.get(key)
    if feature is None or feature.type not in types:
        found = "absent" if feature is None else f"of type {feature.type}"
        raise ValueError(f"{spec.where}: {key!r} must be an input feature of type {'/'.join(types)} in the policy "
                         f"config (it is {found}); merge branch_input_features(...) into input_features")
    return feature


class PolicyBranches(nn.ModuleDict):
    """Branch modules (keys ``depth`` / ``force`` / ``tip``) built for one policy config.

    ``width`` is the VLM hidden size: every token a branch makes has that width.
    """

    def __init__(self, spec: BranchesConfig, config: SmolVLAConfig, width: int):
        super().__init__()
        self.spec = spec
        self.max_state_dim = config.max_state_dim
        depth, force, tip = spec.depth, spec.force, spec.tip
        if depth is not None:
            if depth.keys is None:
                raise ValueError(f"{depth.where}: field 'keys' is unresolved; call resolve_branches(spec, "
                                 f"dataset_features) first")
            ftype = "VISUAL" if isinstance(depth, DepthAsImage) else "ENV"
            for key in depth.keys:
                _input_feature(config, depth, key, (ftype,))
            if isinstance(depth, DepthCNN):
                self["depth"] = DepthEncoder(depth, width)
        if force is not None:
            channels = _input_feature(config, force, FORCE, ("STATE",)).shape[0]
            if isinstance(force, ForceMLP):
                self["force"] = ForceEncoder(force, channels, width)
            elif isinstance(force, ForceState):
                state = config.robot_state_feature
                n_state = state.shape[0] if state is not None else 0
                if n_state + channels > config.max_state_dim:
                    raise ValueError(f"{force.where}: state ({n_state}) + force ({channels}) entries exceed "
                                     f"max_state_dim ({config.max_state_dim})")
        if tip is not None:
            _input_feature(config, tip, TIP_POSITION, ("STATE",) if isinstance(tip, TipToken) else ("STATE", "ENV"))
            if isinstance(tip, TipToken):
                self["tip"] = TipEncoder(tip, width)

    # ------------------------------------------------------------------ hooks
    def before_normalization(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Parameter-free rewrites of the raw batch (a shallow copy is returned)."""
        spec = self.spec
        if not (isinstance(spec.tip, TipText) or isinstance(spec.depth, DepthAsImage)):
            return batch
        batch = dict(batch)
        if isinstance(spec.tip, TipText):
            if LANG_TOKENS in batch or "task" not in batch:
                raise KeyError(f"{spec.tip.where}: needs 'task' strings, not pre-tokenised language")
            tasks = batch["task"]
            tasks = [tasks] if isinstance(tasks, str) else list(tasks)
            batch["task"] = tip_text(tasks, self._get(batch, TIP_POSITION, spec.tip),
                                     self._get(batch, TIP_VALID, spec.tip), spec.tip.decimals)
        if isinstance(spec.depth, DepthAsImage):
            for key in spec.depth.keys:
                batch[key] = depth_as_image(self._get(batch, key, spec.depth), spec.depth.max_depth_m)
        return batch

    def extend_state(self, state: Tensor, batch: dict[str, Any]) -> Tensor:
        """The normalised state, with the current normalised force appended for force ``state``."""
        if not isinstance(self.spec.force, ForceState):
            return state
        return append_force_to_state(state, self._get(batch, FORCE, self.spec.force), batch.get(FORCE_IS_PAD),
                                     self.max_state_dim)

    def token_groups(self, batch: dict[str, Any]) -> list[TokenGroup]:
        """Prefix token groups of the token branches, from the normalised batch."""
        groups: list[TokenGroup] = []
        if "depth" in self:
            for i, key in enumerate(self.spec.depth.keys):
                embs = self["depth"](self._get(batch, key, self.spec.depth))
                groups.append(TokenGroup.uniform(f"depth{i}", embs, _all_valid(embs), 0))
        if "force" in self:
            embs = self["force"](self._get(batch, FORCE, self.spec.force), batch.get(FORCE_IS_PAD))
            groups.append(TokenGroup.uniform("force", embs, _all_valid(embs), 0))
        if "tip" in self:
            valid = self._get(batch, TIP_VALID, self.spec.tip)
            embs = self["tip"](self._get(batch, TIP_POSITION, self.spec.tip), valid)
            mask = valid.to(device=embs.device, dtype=torch.bool).reshape(embs.shape[0], 1)  # (B, 1)
            groups.append(TokenGroup.uniform("tip", embs, mask, 0))
        return groups

    @staticmethod
    def _get(batch: dict[str, Any], key: str, spec: BranchSpec) -> Tensor:
        if key not in batch:
            raise KeyError(f"{spec.where}: the batch has no {key!r}")
        return batch[key]


def _all_valid(embs: Tensor) -> Tensor:
    return torch.ones(embs.shape[:2], dtype=torch.bool, device=embs.device)   # (B, L)

