"""SmolVLM backbone (first N text layers) run jointly with the action expert.

Module tree and parameter names match LeRobot's ``SmolVLMWithExpertModel`` (so state_dict keys
line up): ``vlm`` is a transformers ``SmolVLMForConditionalGeneration`` whose text decoder keeps
only its first ``num_vlm_layers`` layers, ``lm_expert`` is a ``LlamaModel`` built from a copy of the
VLM text config with hidden = int(hidden * 0.75), MLP width from
:func:`~.config.expert_intermediate_size`, and no token embedding.

Only the sub-modules of those transformers models are used (norms, projections, MLPs, the vision
tower and connector); attention, RoPE and the layer loop are ours:

- RoPE with base 10000 (not the VLM's pretraining 100000), computed in fp32, non-interleaved
  (rotate first half against second half), applied to Q and K of both streams.
- Eager attention: GQA by repeating each KV head over its query-head group, Q and K upcast to fp32,
  scores scaled by head_dim**-0.5, masked scores set to float32 min, fp32 softmax, probabilities
  cast to V's dtype. On the CPU with float32 Q/K/V (where every cast above is a no-op) torch's fused
  ``scaled_dot_product_attention`` computes the same thing in one call (see :func:`eager_attention`).
- Self-attention layers (index % self_attn_every_n_layers == 0): Q/K/V of prefix (VLM weights) and
  suffix (expert weights) are concatenated along the sequence and attended jointly under the 2-D
  mask, then split back per stream.
- Cross-attention layers (the others): the prefix attends to itself; the expert's queries attend
  to the VLM layer's post-RoPE K and V (kv_heads*head_dim wide), each first passed through the
  expert's own ``k_proj``/``v_proj`` (replaced by kv_width -> kv_width linears; 320 -> 320 at real
  size). Expert query positions are re-based to start at 0; no RoPE on those keys.
- Per stream: ``input_layernorm`` -> projections -> attention -> ``o_proj`` -> residual ->
  ``post_attention_layernorm`` -> MLP -> residual; a final norm per stream after the last layer.

Dtypes follow the weights: each stream's normed hidden state is cast to its projection's dtype, the
attention output to ``o_proj``'s dtype, and a residual sum keeps the dtype of the branch output
(as LeRobot's in-place ``+=`` does). This lets a checkpoint that mixes bf16 and fp32 tensors run as is.

Three calling modes of :meth:`SmolVLMWithExpert.forward`:

- both streams, no cache: the training pass (and the no-cache sampling path);
- prefix only with ``fill_cache=True``: every layer runs self-attention over the prefix and stores
  its post-RoPE K/V (B, L, kv_heads, head_dim); with ``prefix_out=False`` (the sampler, which reads
  only the cache) the last layer stops once its K/V are stored: its attention, MLP and the final
  norm would only make the prefix output;
- suffix only with a filled cache: self-attention layers attend to [cached prefix; suffix],
  cross-attention layers read the cached prefix K/V. The cached K/V are never modified.

What the layers of one call share is computed once per call: the rotary sin/cos tables of its
positions (and of the re-based expert positions). A cached call also keeps them, and the cross
layers' expert K/V projections of the cached prefix, in the cache (:class:`KVCache`), so the
denoising steps of one sampling, which pass the same position tensor, compute them once in all.
Same operations on the same inputs: the results are bitwise those of computing them every time.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, SmolVLMConfig, SmolVLMForConditionalGeneration

from .config import expert_intermediate_size

ROPE_BASE = 10_000.0

RopeTables = tuple  # (sin, cos), each (B, L, 1, head_dim / 2) float32


class KVCache(list):
    """The prefix's post-RoPE (keys, values) per layer, each (B, L_prefix, kv_heads, head_dim).

    ``derived`` holds what the denoising steps compute from the cache alone (rotary tables of the
    step positions, the cross layers' expert K/V projections, the step mask and positions), filled
    by the first step and read by the others. A cache belongs to one sampling call, with fixed weights.
    """

    def __init__(self, *layers: Any):
        super().__init__(*layers)
        self.derived: dict[Any, Any] = {}


def memoised(cache: Any, key: Any, compute: Callable[[], Any], anchor: Any = None) -> Any:
    """``compute()`` once per :class:`KVCache`, ``key`` and ``anchor``; every time without a cache.

    ``anchor``: the input besides the cache that the value depends on (a tensor), compared by
    identity; the memo keeps it alive, so another tensor can never pass for it.
    """
    store = getattr(cache, "derived", None)
    if store is None:
        return compute()
    hit = store.get(key)
    if hit is None or hit[0] is not anchor:
        hit = store[key] = (anchor, compute())
    return hit[1]


def rope_tables(positions: Tensor, head_dim: int, base: float = ROPE_BASE) -> RopeTables:
    """sin and cos of the rotary angles at integer ``positions`` (B, L): each (B, L, 1, head_dim / 2)."""
    half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    wavelengths = base ** exponents                                        # (half,)
    angles = positions[..., None].to(torch.float32) / wavelengths[None, None, :]   # (B, L, half)
    angles = angles[..., None, :]                                          # (B, L, 1, half)
    return torch.sin(angles), torch.cos(angles)


def apply_rope(x: Tensor, positions: Tensor, base: float = ROPE_BASE, tables: RopeTables | None = None) -> Tensor:
    """Rotary embedding of ``x`` (B, L, H, D) at integer ``positions`` (B, L); fp32 inside.
    ``tables``: :func:`rope_tables` of these positions, when the caller has them already."""
    out_dtype = x.dtype
    x = x.to(torch.float32)
    half = x.shape[-1] // 2
    sin, cos = tables if tables is not None else rope_tables(positions, x.shape[-1], base)
    first, second = x[..., :half], x[..., half:]
    rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return rotated.to(out_dtype)


class _Rotary:
    """The rotary tables of one call's positions, made on first use and shared by all its layers."""

    def __init__(self, positions: Tensor, head_dim: int):
        self.positions, self.head_dim = positions, head_dim
        self._tables: RopeTables | None = None
        self._rebased: dict[int, tuple[Tensor, RopeTables]] = {}

    def tables(self, n: int) -> RopeTables:
        """Tables of the first ``n`` positions (slices of one elementwise computation)."""
        if self._tables is None:
            self._tables = rope_tables(self.positions, self.head_dim)
        sin, cos = self._tables
        return (sin, cos) if n == sin.shape[1] else (sin[:, :n], cos[:, :n])

    def rebased(self, start: int) -> tuple[Tensor, RopeTables]:
        """The positions from ``start`` on, re-based to start at 0 per sample, and their tables:
        the expert queries of the cross-attention layers."""
        if start not in self._rebased:
            positions = self.positions[:, start:]
            positions = positions - positions.min(dim=1, keepdim=True).values
            self._rebased[start] = (positions, rope_tables(positions, self.head_dim))
        return self._rebased[start]


def fused_attention_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`eager_attention` runs through torch's fused kernel: on the CPU, all float32."""
    return q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32


def attention_bias(mask: Tensor) -> Tensor:
    """(B, Lq, Lk) bool -> (B, 1, Lq, Lk) float32 additive mask: 0 where visible, float32 min where not."""
    return torch.where(mask[:, None, :, :], 0.0, torch.finfo(torch.float32).min)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, head_dim: int,
                    bias: Tensor | None = None) -> Tensor:
    """q (B, Lq, H, D), k/v (B, Lk, Hkv, D), mask (B, Lq, Lk) bool -> (B, Lq, H*D) in v's dtype.

    When :func:`fused_attention_applies`, torch's fused kernel does it (:func:`_fused_attention`):
    the same maths in one call instead of a dozen small ones (the denoising steps are bound by
    per-call overhead there), equal to the eager form within float32 rounding (~1e-6). ``bias``:
    ``attention_bias(mask)`` when the caller has it already (it is read only by the fused kernel).
    """
    if fused_attention_applies(q, k, v):
        return _fused_attention(q, k, v, attention_bias(mask) if bias is None else bias, head_dim)
    batch, q_len, n_heads, _ = q.shape
    group = n_heads // k.shape[2]
    # Query head h reads KV head h // group.
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    q32 = q.to(torch.float32).transpose(1, 2)                             # (B, H, Lq, D)
    k32 = k.to(torch.float32).transpose(1, 2)                             # (B, H, Lk, D)
    scores = torch.matmul(q32, k32.transpose(2, 3)) * head_dim ** -0.5
    scores = torch.where(mask[:, None, :, :], scores, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.transpose(1, 2))                          # (B, H, Lq, D)
    return out.transpose(1, 2).reshape(batch, q_len, n_heads * out.shape[-1])


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, head_dim: int) -> Tensor:
    """:func:`eager_attention` for float32 through ``F.scaled_dot_product_attention``: GQA by the
    kernel (``enable_gqa``, query head h reads KV head h // group), the same scale, and masked
    scores at float32 min as an additive bias (:func:`attention_bias`, not -inf), so that a query
    with no visible key still attends uniformly as in the eager form instead of giving NaN."""
    batch, q_len, n_heads, _ = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=bias, scale=head_dim ** -0.5,
                                         enable_gqa=n_heads != k.shape[2])
    return out.transpose(1, 2).reshape(batch, q_len, n_heads * out.shape[-1])


def _residual(branch: Tensor, skip: Tensor) -> Tensor:
    """``branch + skip`` kept in the branch dtype (LeRobot's in-place ``+=``)."""
    return (branch + skip).to(branch.dtype)


class SmolVLMWithExpert(nn.Module):
    """The VLM (vision tower, connector, truncated text decoder) plus the action expert."""

    def __init__(self, vlm_config: SmolVLMConfig, *, num_vlm_layers: int = 16, num_expert_layers: int = -1,
                 attention_mode: str = "cross_attn", self_attn_every_n_layers: int = 2,
                 expert_width_multiplier: float = 0.75, vlm: nn.Module | None = None):
        super().__init__()
        self.vlm = vlm if vlm is not None else SmolVLMForConditionalGeneration(vlm_config)
        text = self.vlm.model.text_model
        if num_vlm_layers > 0:
            text.layers = text.layers[:num_vlm_layers]
        self.num_vlm_layers = len(text.layers)
        self.config = self.vlm.config
        text_cfg = self.config.text_config

        expert_cfg = copy.deepcopy(text_cfg)
        expert_cfg.hidden_size = int(text_cfg.hidden_size * expert_width_multiplier)
        expert_cfg.intermediate_size = expert_intermediate_size(expert_cfg.hidden_size)
        expert_cfg.num_hidden_layers = self.num_vlm_layers
        if num_expert_layers > 0:
            if self.num_vlm_layers % num_expert_layers:
                raise ValueError(f"num_vlm_layers ({self.num_vlm_layers}) must be a multiple of "
                                 f"num_expert_layers ({num_expert_layers})")
            expert_cfg.num_hidden_layers = num_expert_layers
        self.lm_expert = AutoModel.from_config(expert_cfg)
        self.num_expert_layers = len(self.lm_expert.layers)
        self.attention_mode = attention_mode
        self.self_attn_every_n_layers = self_attn_every_n_layers
        self.num_heads = text_cfg.num_attention_heads
        self.num_kv_heads = text_cfg.num_key_value_heads
        self.head_dim = text_cfg.head_dim
        self.expert_hidden_size = expert_cfg.hidden_size

        if "cross" in attention_mode:
            # Cross layers read the VLM's projected K/V (kv_heads * head_dim wide), not hidden states.
            kv_width = self.num_kv_heads * self.head_dim
            expert_kv_width = expert_cfg.num_key_value_heads * expert_cfg.head_dim
            for idx, layer in enumerate(self.lm_expert.layers):
                if self._is_self_attn_index(idx):
                    continue
                layer.self_attn.k_proj = nn.Linear(kv_width, expert_kv_width, bias=expert_cfg.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_width, expert_kv_width, bias=expert_cfg.attention_bias)
        self.lm_expert.embed_tokens = None  # the expert never embeds tokens; not saved either

    # --------------------------------------------------------------- layout
    def _is_self_attn_index(self, idx: int) -> bool:
        n = self.self_attn_every_n_layers
        return n > 0 and idx % n == 0

    def is_cross_layer(self, idx: int) -> bool:
        return "cross" in self.attention_mode and not self._is_self_attn_index(idx)

    @property
    def text_model(self) -> nn.Module:
        return self.vlm.model.text_model

    def expert_layer(self, vlm_idx: int) -> nn.Module | None:
        """Expert layer paired with VLM layer ``vlm_idx`` (None when the expert has fewer layers)."""
        stride = self.num_vlm_layers // self.num_expert_layers
        if stride > 0 and vlm_idx > 0 and vlm_idx % stride != 0:
            return None
        return self.lm_expert.layers[vlm_idx // stride if stride > 0 else vlm_idx]

    def set_requires_grad(self, freeze_vision_encoder: bool, train_expert_only: bool) -> None:
        """LeRobot's freezing: vision tower and/or whole VLM; else the unused tail of the VLM."""
        if freeze_vision_encoder:
            for p in self.vlm.model.vision_model.parameters():
                p.requires_grad = False
        if train_expert_only:
            for p in self.vlm.parameters():
                p.requires_grad = False
            return
        # The VLM's last layer (and lm_head / final norm) never influence the actions: keep them
        # frozen so DDP sees no unused trainable parameters.
        last = [self.num_vlm_layers - 1]
        if self.num_vlm_layers != self.num_expert_layers and self.num_vlm_layers % self.num_expert_layers == 0:
            last.append(self.num_vlm_layers - 2)
        patterns = ["lm_head", "text_model.norm.weight"] + [f"text_model.layers.{i}." for i in last]
        unmatched = set(patterns)
        for name, p in self.vlm.named_parameters():
            hits = [pat for pat in patterns if pat in name]
            if hits:
                p.requires_grad = False
                unmatched.difference_update(hits)
        if unmatched:
            raise RuntimeError(f"freeze patterns matched no VLM parameter: {sorted(unmatched)}")

    # ------------------------------------------------------------ embedding
    def embed_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, 512, 512) in [-1, 1] -> (B, 64, hidden): vision tower, then pixel-shuffle connector."""
        vision = self.vlm.model.vision_model
        hidden = vision(pixel_values=pixels.to(dtype=vision.dtype), patch_attention_mask=None).last_hidden_state
        return self.vlm.model.connector(hidden)

    def embed_language_tokens(self, tokens: Tensor) -> Tensor:
        return self.text_model.get_input_embeddings()(tokens)

    # -------------------------------------------------------------- forward
    def forward(self, prefix: Tensor | None, suffix: Tensor | None, attention_mask: Tensor,
                position_ids: Tensor, cache: KVCache | None = None, fill_cache: bool = False,
                prefix_out: bool = True) -> tuple[Tensor | None, Tensor | None, KVCache | None]:
        """Run the layers; returns (prefix_out, suffix_out, cache), outputs after the final norms.
        ``prefix_out=False`` with ``fill_cache``: the cache alone (prefix_out is None).

        ``attention_mask`` is (B, Lq, Lk) bool over the queries and keys of this call (keys include
        the cached prefix), ``position_ids`` (B, Lq) the positions of this call's tokens.
        """
        if fill_cache and (prefix is None or suffix is not None or cache is not None):
            raise ValueError("fill_cache needs the prefix alone and no cache")
        if cache is not None and (prefix is not None or suffix is None):
            raise ValueError("a cached call takes the suffix alone")
        new_cache: KVCache | None = KVCache() if fill_cache else None
        rotary = memoised(cache, "rotary", lambda: _Rotary(position_ids, self.head_dim), anchor=position_ids)
        text_layers = self.text_model.layers
        for idx in range(self.num_vlm_layers):
            vlm_layer = text_layers[idx] if prefix is not None else None
            exp_layer = self.expert_layer(idx) if suffix is not None else None
            if fill_cache and not prefix_out and idx == self.num_vlm_layers - 1:
                new_cache.append(self._prefix_kv(vlm_layer, prefix, rotary))
                prefix = None
            elif self.is_cross_layer(idx) and not fill_cache:
                prefix, suffix = self._cross_layer(idx, vlm_layer, exp_layer, prefix, suffix,
                                                   attention_mask, rotary, cache)
            else:
                prefix, suffix = self._self_layer(idx, vlm_layer, exp_layer, prefix, suffix,
                                                  attention_mask, rotary, cache, new_cache)
        if prefix is not None:
            prefix = self.text_model.norm(prefix)
        if suffix is not None:
            suffix = self.lm_expert.norm(suffix)
        return prefix, suffix, (new_cache if fill_cache else cache)

    # ------------------------------------------------------------- layers
    def _qkv(self, layer: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = layer.self_attn
        normed = layer.input_layernorm(hidden).to(dtype=attn.q_proj.weight.dtype)
        shape = (*normed.shape[:-1], -1, self.head_dim)                     # (B, L, heads, D)
        return attn.q_proj(normed).view(shape), attn.k_proj(normed).view(shape), attn.v_proj(normed).view(shape)

    def _prefix_kv(self, layer: nn.Module, hidden: Tensor, rotary: _Rotary) -> tuple[Tensor, Tensor]:
        """The post-RoPE K and the V of a prefix-only layer, as :meth:`_self_layer` stores them."""
        _, k, v = self._qkv(layer, hidden)
        return apply_rope(k, rotary.positions, tables=rotary.tables(k.shape[1])), v

    @staticmethod
    def _finish(layer: nn.Module, hidden: Tensor, att: Tensor) -> Tensor:
        out = layer.self_attn.o_proj(att.to(layer.self_attn.o_proj.weight.dtype))
        out = _residual(out, hidden)
        mlp_out = layer.mlp(layer.post_attention_layernorm(out))
        return _residual(mlp_out, out)

    @staticmethod
    def _step_bias(cache: KVCache | None, kind: str, mask: Tensor, anchor: Tensor, q: Tensor, k: Tensor,
                   v: Tensor) -> Tensor | None:
        """The fused kernel's additive mask for a cached step's ``kind`` of layer: the same at every
        step (``anchor``, the step mask, is), so made once per cache. None when no cache / no fused kernel."""
        if cache is None or not fused_attention_applies(q, k, v):
            return None
        return memoised(cache, ("attention_bias", kind), lambda: attention_bias(mask), anchor=anchor)

    def _self_layer(self, idx, vlm_layer, exp_layer, prefix, suffix, mask, rotary, cache, new_cache):
        streams = [(h, layer) for h, layer in ((prefix, vlm_layer), (suffix, exp_layer))
                   if h is not None and layer is not None]
        if not streams:
            return prefix, suffix
        qkv = [self._qkv(layer, h) for h, layer in streams]
        # One stream (a cached step, the cache fill): its q/k/v as they are, no concatenated copy.
        q, k, v = qkv[0] if len(qkv) == 1 else (torch.cat([t[i] for t in qkv], dim=1) for i in range(3))
        n = q.shape[1]
        positions = rotary.positions
        if n < positions.shape[1]:  # a stream without a layer here: attend with the others only
            positions, mask = positions[:, :n], mask[:, :n, :n]
        tables = rotary.tables(n)
        q = apply_rope(q, positions, tables=tables)
        k = apply_rope(k, positions, tables=tables)
        if new_cache is not None:
            new_cache.append((k, v))
        if cache is not None:
            past_k, past_v = cache[idx]
            k = torch.cat([past_k, k], dim=1)
            v = torch.cat([past_v, v], dim=1)
        bias = self._step_bias(cache, "self", mask, mask, q, k, v)
        att = eager_attention(q, k, v, mask, self.head_dim, bias=bias)
        outs: list[Tensor | None] = [prefix, suffix]
        start = 0
        for slot, (h, layer) in enumerate(((prefix, vlm_layer), (suffix, exp_layer))):
            if h is None or layer is None:
                continue
            end = start + h.shape[1]
            outs[slot] = self._finish(layer, h, att[:, start:end])
            start = end
        return outs[0], outs[1]

    def _cross_layer(self, idx, vlm_layer, exp_layer, prefix, suffix, mask, rotary, cache):
        if cache is None:
            n_prefix = prefix.shape[1]
            prefix_pos = rotary.positions[:, :n_prefix]
            q, k, v = self._qkv(vlm_layer, prefix)
            tables = rotary.tables(n_prefix)
            q = apply_rope(q, prefix_pos, tables=tables)
            k = apply_rope(k, prefix_pos, tables=tables)
            att = eager_attention(q, k, v, mask[:, :n_prefix, :n_prefix], self.head_dim)
            prefix = self._finish(vlm_layer, prefix, att)
            src_k, src_v = k, v
        else:
            n_prefix = 0                     # this call's positions are the suffix's alone
            src_k, src_v = cache[idx]
        if exp_layer is None:
            return prefix, suffix
        attn = exp_layer.self_attn
        normed = exp_layer.input_layernorm(suffix).to(dtype=attn.q_proj.weight.dtype)
        q = attn.q_proj(normed).view(*normed.shape[:-1], -1, self.head_dim)
        batch, n_src = src_k.shape[:2]

        def project() -> tuple[Tensor, Tensor]:
            # The VLM's post-RoPE keys and its values, flattened to (B, L, kv_heads*D), re-projected.
            kv_shape = (batch, n_src, -1, self.head_dim)
            return (attn.k_proj(src_k.to(attn.k_proj.weight.dtype).reshape(batch, n_src, -1)).view(kv_shape),
                    attn.v_proj(src_v.to(attn.v_proj.weight.dtype).reshape(batch, n_src, -1)).view(kv_shape))

        # They depend on the cached prefix and the weights only: once per cache.
        k, v = memoised(cache, ("expert_kv", idx), project)
        expert_pos, tables = rotary.rebased(n_prefix)                  # re-based to 0
        q = apply_rope(q, expert_pos, tables=tables)
        to_source = mask[:, -suffix.shape[1]:, :n_src]
        bias = self._step_bias(cache, "cross", to_source, mask, q, k, v)
        att = eager_attention(q, k, v, to_source, self.head_dim, bias=bias)
        suffix = self._finish(exp_layer, suffix, att)
        return prefix, suffix
