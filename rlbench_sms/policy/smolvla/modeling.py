"""VLAFlowMatching: prefix/suffix embedding, the flow-matching loss and the Euler sampler.

Parameter names match LeRobot's ``VLAFlowMatching`` (``model.*`` in a checkpoint):
``vlm_with_expert``, ``state_proj`` (32 -> VLM width), ``action_in_proj`` (32 -> expert width),
``action_out_proj`` (expert width -> 32), ``action_time_mlp_in`` (2 x expert -> expert),
``action_time_mlp_out`` (expert -> expert).

The prefix is built from separate token groups, in this order:

1. per camera: [optional ``<fake_token_around_image><global-img>``] 64 image tokens
   (vision tower -> pixel-shuffle connector, times sqrt(VLM width)) [optional
   ``<fake_token_around_image>``]; pad mask = that camera's validity;
2. language: token embeddings times sqrt(VLM width); pad mask = tokenizer attention mask;
3. (extension point) any extra :class:`TokenGroup` given by the caller;
4. state: one token ``state_proj(state padded to 32)``, unscaled, starting its own attention block.

Images and language carry ar = 0 (one bidirectional block); the state token ar = 1 (it sees the
images and language, they do not see it); each of the ``chunk_size`` action tokens ar = 1 (causal
among themselves, they see the whole valid prefix). Positions are ``cumsum(pad) - 1`` over the
whole sequence, so padding does not advance them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SmolVLMConfig

from .config import SmolVLAConfig
from .flow_matching import (euler_integrate, interpolate, make_att_2d_masks, sample_noise, sample_time,
                            time_embedding)
from .vlm_with_expert import KVCache, SmolVLMWithExpert, memoised


@dataclass
class TokenGroup:
    """A run of prefix tokens: embeddings (B, L, D), validity (B, L) bool, ar flags (L,) int.

    ``ar`` 0 joins the current attention block, 1 starts a new block that earlier tokens cannot see.
    """

    name: str
    embs: Tensor
    pad_mask: Tensor
    ar: Tensor

    @classmethod
    def uniform(cls, name: str, embs: Tensor, pad_mask: Tensor, ar_value: int) -> "TokenGroup":
        ar = torch.full((embs.shape[1],), ar_value, dtype=torch.long, device=embs.device)
        return cls(name, embs, pad_mask, ar)


@dataclass
class FlowTerms:
    """Everything one training pass computes, for losses and for inspection."""

    losses: Tensor      # (B, T, max_action_dim) elementwise squared error
    v_t: Tensor         # (B, T, max_action_dim) predicted velocity, float32
    u_t: Tensor         # (B, T, max_action_dim) target velocity
    x_t: Tensor         # (B, T, max_action_dim) noisy actions
    time: Tensor        # (B,)


class VLAFlowMatching(nn.Module):
    def __init__(self, config: SmolVLAConfig, vlm_config: SmolVLMConfig,
                 image_special_token_ids: tuple[int, int] | None = None, vlm: nn.Module | None = None):
        """``image_special_token_ids`` = (fake_image_token_id, global_image_token_id), needed only
        with ``config.add_image_special_tokens``. ``vlm`` is a pre-loaded SmolVLM (for
        ``load_vlm_weights``); otherwise it is built from ``vlm_config``."""
        super().__init__()
        self.config = config
        self.vlm_with_expert = SmolVLMWithExpert(
            vlm_config,
            num_vlm_layers=config.num_vlm_layers,
            num_expert_layers=config.num_expert_layers,
            attention_mode=config.attention_mode,
            self_attn_every_n_layers=config.self_attn_every_n_layers,
            expert_width_multiplier=config.expert_width_multiplier,
            vlm=vlm,
        )
        vlm_width = self.vlm_with_expert.config.text_config.hidden_size
        expert_width = self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(config.max_state_dim, vlm_width)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert_width)
        self.action_out_proj = nn.Linear(expert_width, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert_width, expert_width)
        self.action_time_mlp_out = nn.Linear(expert_width, expert_width)
        if config.add_image_special_tokens and image_special_token_ids is None:
            raise ValueError("add_image_special_tokens needs the tokenizer's fake/global image token ids")
        self.image_special_token_ids = image_special_token_ids
        self.set_requires_grad()

    def set_requires_grad(self) -> None:
        self.vlm_with_expert.set_requires_grad(self.config.freeze_vision_encoder, self.config.train_expert_only)
        for p in self.state_proj.parameters():
            p.requires_grad = self.config.train_state_proj

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval mode (LeRobot does the same).
        if self.config.freeze_vision_encoder:
            self.vlm_with_expert.vlm.model.vision_model.eval()
        if self.config.train_expert_only:
            self.vlm_with_expert.vlm.eval()
        return self

    # ------------------------------------------------------------ prefix
    def _special_tokens(self, ids: Sequence[int], batch: int, device) -> Tensor:
        tokens = torch.tensor(list(ids), dtype=torch.long, device=device)
        return self.vlm_with_expert.embed_language_tokens(tokens).unsqueeze(0).expand(batch, -1, -1)

    def embed_images(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Each camera's (B, 64, D) vision + connector tokens, unscaled.

        On the CPU, cameras of one shape and dtype go through the vision tower as one batch: every
        op there works per image or per token, so the values are those of one call per camera
        (bitwise on the tiny model), and fewer, larger calls use the threads better (-2.6 ms of a
        41 ms tiny chunk with 2 threads). Other devices keep one call per camera.
        """
        if len(images) < 2:
            return [self.vlm_with_expert.embed_image(img) for img in images]
        first = images[0]
        if first.device.type == "cpu" and all(
                img.shape == first.shape and img.dtype == first.dtype and img.device == first.device
                for img in images):
            return list(self.vlm_with_expert.embed_image(torch.cat(list(images))).split(first.shape[0]))
        return [self.vlm_with_expert.embed_image(img) for img in images]

    def image_groups(self, images: Sequence[Tensor], img_masks: Sequence[Tensor]) -> list[TokenGroup]:
        groups: list[TokenGroup] = []
        for i, (img, valid, emb) in enumerate(zip(images, img_masks, self.embed_images(images))):
            batch = img.shape[0]
            if self.config.add_image_special_tokens:
                fake, global_img = self.image_special_token_ids
                start = self._special_tokens([fake, global_img], batch, img.device)
                groups.append(TokenGroup.uniform(f"image{i}_start", start,
                                                 torch.ones(start.shape[:2], dtype=torch.bool, device=img.device), 0))
            emb = emb * torch.tensor(emb.shape[-1] ** 0.5, dtype=emb.dtype, device=emb.device)
            mask = valid[:, None].expand(batch, emb.shape[1])
            groups.append(TokenGroup.uniform(f"image{i}", emb, mask, 0))
            if self.config.add_image_special_tokens:
                end = self._special_tokens([self.image_special_token_ids[0]], batch, img.device)
                groups.append(TokenGroup.uniform(f"image{i}_end", end,
                                                 torch.ones(end.shape[:2], dtype=torch.bool, device=img.device), 0))
        return groups

    def language_group(self, lang_tokens: Tensor, lang_masks: Tensor) -> TokenGroup:
        emb = self.vlm_with_expert.embed_language_tokens(lang_tokens)
        emb = emb * math.sqrt(emb.shape[-1])
        return TokenGroup.uniform("language", emb, lang_masks.bool(), 0)

    def state_group(self, state: Tensor) -> TokenGroup:
        emb = self.state_proj(state)
        if emb.ndim == 2:
            emb = emb[:, None, :]                                             # (B, 1, D)
        mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        return TokenGroup.uniform("state", emb, mask, 1)

    def assemble_prefix(self, groups: Sequence[TokenGroup]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate groups -> (embs (B, L, D), pad (B, L) bool, ar (B, L) long), right-padded to
        ``config.prefix_length`` when that is longer."""
        embs = torch.cat([g.embs for g in groups], dim=1)
        pad = torch.cat([g.pad_mask for g in groups], dim=1)
        ar = torch.cat([g.ar for g in groups], dim=0)
        batch, length = pad.shape
        target = self.config.prefix_length
        if length < target:
            extra = target - length
            embs = torch.cat([embs, embs.new_zeros(batch, extra, embs.shape[-1])], dim=1)
            pad = torch.cat([pad, pad.new_zeros(batch, extra)], dim=1)
            ar = torch.cat([ar, ar.new_zeros(extra)], dim=0)
        return embs, pad, ar[None, :].expand(batch, -1)

    def prefix_groups(self, images, img_masks, lang_tokens, lang_masks, state,
                      extra_groups: Sequence[TokenGroup] = ()) -> list[TokenGroup]:
        return [*self.image_groups(images, img_masks), self.language_group(lang_tokens, lang_masks),
                *extra_groups, self.state_group(state)]

    def embed_prefix(self, images, img_masks, lang_tokens, lang_masks, state,
                     extra_groups: Sequence[TokenGroup] = ()) -> tuple[Tensor, Tensor, Tensor]:
        return self.assemble_prefix(self.prefix_groups(images, img_masks, lang_tokens, lang_masks, state,
                                                       extra_groups))

    # ------------------------------------------------------------ suffix
    def embed_suffix(self, noisy_actions: Tensor, time: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, 32) noisy actions + (B,) times -> (embs (B, T, E), pad (B, T), ar (B, T))."""
        action_emb = self.action_in_proj(noisy_actions)
        t_emb = time_embedding(time, self.vlm_with_expert.expert_hidden_size, self.config.min_period,
                               self.config.max_period).to(dtype=action_emb.dtype)
        t_emb = t_emb[:, None, :].expand_as(action_emb)
        fused = torch.cat([action_emb, t_emb], dim=2)
        fused = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
        batch, length = fused.shape[:2]
        pad = torch.ones(batch, length, dtype=torch.bool, device=fused.device)
        ar = torch.ones(batch, self.config.chunk_size, dtype=torch.long, device=fused.device)
        return fused, pad, ar

    # ------------------------------------------------------------ training
    def flow_terms(self, images, img_masks, lang_tokens, lang_masks, state, actions,
                   noise: Tensor | None = None, time: Tensor | None = None,
                   extra_groups: Sequence[TokenGroup] = ()) -> FlowTerms:
        if noise is None:
            noise = sample_noise(actions.shape, actions.device)
        if time is None:
            time = sample_time(actions.shape[0], actions.device)
        x_t, u_t = interpolate(noise, actions, time)
        prefix, prefix_pad, prefix_ar = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state,
                                                          extra_groups)
        suffix, suffix_pad, suffix_ar = self.embed_suffix(x_t, time)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        ar = torch.cat([prefix_ar, suffix_ar], dim=1)
        mask = make_att_2d_masks(pad, ar)
        positions = torch.cumsum(pad, dim=1) - 1
        _, suffix_out, _ = self.vlm_with_expert(prefix, suffix, mask, positions)
        v_t = self._velocity_head(suffix_out)
        losses = F.mse_loss(u_t, v_t, reduction="none")
        return FlowTerms(losses=losses, v_t=v_t, u_t=u_t, x_t=x_t, time=time)

    def forward(self, images, img_masks, lang_tokens, lang_masks, state, actions,
                noise: Tensor | None = None, time: Tensor | None = None) -> Tensor:
        """Elementwise flow-matching loss (B, T, max_action_dim)."""
        return self.flow_terms(images, img_masks, lang_tokens, lang_masks, state, actions, noise, time).losses

    def _velocity_head(self, suffix_out: Tensor) -> Tensor:
        # The expert output is upcast to fp32 before the (fp32) output head.
        return self.action_out_proj(suffix_out[:, -self.config.chunk_size:].to(dtype=torch.float32))

    # ------------------------------------------------------------ sampling
    def sample_actions(self, images, img_masks, lang_tokens, lang_masks, state,
                       noise: Tensor | None = None, use_cache: bool | None = None,
                       extra_groups: Sequence[TokenGroup] = ()) -> Tensor:
        """Denoised normalised actions (B, chunk_size, max_action_dim), float32."""
        batch = state.shape[0]
        if noise is None:
            noise = sample_noise((batch, self.config.chunk_size, self.config.max_action_dim), state.device)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        prefix, prefix_pad, prefix_ar = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state,
                                                          extra_groups)
        if use_cache:
            cache = self.fill_prefix_cache(prefix, prefix_pad, prefix_ar)
            velocity = lambda x_t, t: self.cached_velocity(cache, prefix_pad, x_t, t)  # noqa: E731
        else:
            velocity = lambda x_t, t: self.full_velocity(prefix, prefix_pad, prefix_ar, x_t, t)  # noqa: E731
        return euler_integrate(velocity, noise, self.config.num_steps)

    def fill_prefix_cache(self, prefix: Tensor, prefix_pad: Tensor, prefix_ar: Tensor) -> KVCache:
        mask = make_att_2d_masks(prefix_pad, prefix_ar)
        positions = torch.cumsum(prefix_pad, dim=1) - 1
        _, _, cache = self.vlm_with_expert(prefix, None, mask, positions, fill_cache=True, prefix_out=False)
        return cache

    def cached_velocity(self, cache: KVCache, prefix_pad: Tensor, x_t: Tensor, time: Tensor) -> Tensor:
        """One denoising step against the cached prefix K/V."""
        suffix, suffix_pad, suffix_ar = self.embed_suffix(x_t, time)

        def layout() -> tuple[Tensor, Tensor]:
            batch, n_suffix = suffix_pad.shape
            n_prefix = prefix_pad.shape[1]
            to_prefix = prefix_pad[:, None, :].expand(batch, n_suffix, n_prefix)  # every valid prefix token
            among_suffix = make_att_2d_masks(suffix_pad, suffix_ar)
            mask = torch.cat([to_prefix, among_suffix], dim=2)                 # (B, Ls, Lp + Ls)
            positions = prefix_pad.sum(dim=-1)[:, None] + torch.cumsum(suffix_pad, dim=1) - 1
            return mask, positions

        # The suffix is all valid tokens, each its own block (embed_suffix): the mask and positions
        # depend on the prefix padding and the chunk length only, the same at every step.
        mask, positions = memoised(cache, ("step_layout", tuple(suffix_pad.shape)), layout, anchor=prefix_pad)
        _, suffix_out, _ = self.vlm_with_expert(None, suffix, mask, positions, cache=cache)
        return self._velocity_head(suffix_out)

    def full_velocity(self, prefix: Tensor, prefix_pad: Tensor, prefix_ar: Tensor, x_t: Tensor,
                      time: Tensor) -> Tensor:
        """One denoising step recomputing the prefix (no cache); equal to :meth:`cached_velocity`."""
        suffix, suffix_pad, suffix_ar = self.embed_suffix(x_t, time)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        mask = make_att_2d_masks(pad, torch.cat([prefix_ar, suffix_ar], dim=1))
        positions = torch.cumsum(pad, dim=1) - 1
        _, suffix_out, _ = self.vlm_with_expert(prefix, suffix, mask, positions)
        return self._velocity_head(suffix_out)
