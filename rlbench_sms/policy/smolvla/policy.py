"""SmolVLAPolicy: LeRobot's SmolVLA (weights, numerics, checkpoint layout) without LeRobot.

Getting the real assets once, then working offline::

    # the VLM architecture + tokenizer (weights too, for training from SmolVLM2)
    hf download HuggingFaceTB/SmolVLM2-500M-Video-Instruct --local-dir models/SmolVLM2-500M-Video-Instruct
    # the pretrained SmolVLA policy
    hf download lerobot/smolvla_base --local-dir models/smolvla_base
    # (older huggingface_hub: `huggingface-cli download ... --local-dir ...`)

    export HF_HUB_OFFLINE=1
    policy = SmolVLAPolicy.from_pretrained("models/smolvla_base",
                                           vlm_path="models/SmolVLM2-500M-Video-Instruct",
                                           dataset_stats=meta.stats)

Nothing here touches the network: every ``from_pretrained`` passes ``local_files_only=True``, and
``vlm_model_name`` must be (or ``vlm_path`` must override it with) a local directory.
``smolvla_base`` ships stats under dataset-qualified names and none for ``observation.state``, which
LeRobot silently ignores; here that is an error unless ``dataset_stats`` supplies them (fine-tuning
always does). Its cameras are ``observation.images.camera1..3``: name your batch keys accordingly.
Tensors keep their file dtypes (bf16 backbone, fp32 heads); ``dtype="lerobot"`` instead reproduces
the dtypes LeRobot's own loader ends up with (it copies the file into a model built from the VLM
config, which upcasts smolvla_base's bf16 vision tower and connector to fp32).

Batches are LeRobot-style dicts in robot units: ``observation.images.<cam>`` (B, 3, H, W) uint8 or
float in [0, 1], ``observation.state`` (B, S), ``task`` list[str] (or pre-tokenised
``observation.language.tokens`` / ``.attention_mask``), and for training ``action`` (B, T, A) with
``action_is_pad`` (B, T); depth (B, 1, H, W) as uint16 millimetres or float metres. A single
observation (state (S,), images (3, H, W), task str) is a batch of one. Every entry point converts
its input with ``rlbench_sms.data.convert.to_model_input`` (the DataModule's conversion too), so a
raw dataset item, a converted batch and a device observation give the same actions, and a wrong
dtype / range / layout is a one-line ``ModelInputError``. Normalisation with the checkpoint's stats
happens inside.

Sensor branches (``branches=``, see ``rlbench_sms.policy.branches``) read depth, force and tip keys
from the same batch. With every branch off the policy is exactly LeRobot's SmolVLA; with one on,
the checkpoint gains a ``branches.json`` sidecar and ``branches.*`` tensors in ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from rlbench_sms.data.convert import to_model_input

from ..branches.config import (BRANCHES_FILE, BranchesConfig, parse_branches, read_branches_file,
                               write_branches_file)
from ..branches.runtime import PolicyBranches
from ..normalization import Normalizer
from . import aloha
from .checkpoint import (CONFIG_FILE, WEIGHTS_FILE, CheckpointError, ProcessorSpec, check_keys, read_processors,
                         split_legacy_stats, write_checkpoint)
from .config import DEFAULT_VLM, PolicyFeature, SmolVLAConfig
from .modeling import FlowTerms, TokenGroup, VLAFlowMatching
from .preprocess import (LANG_MASK, LANG_TOKENS, pad_last_dim, prepare_images, prepare_state, tokenize_tasks)
from .tiny import FAKE_IMAGE, GLOBAL_IMAGE

logger = logging.getLogger(__name__)

ACTION = "action"
STATE = "observation.state"
ACTION_IS_PAD = "action_is_pad"
# Tokenised task batches kept by SmolVLAPolicy (a runner asks with the same task text every chunk);
# past this many distinct ones (training batches mix tasks) the memo starts afresh.
TOKEN_CACHE_SIZE = 64


def resolve_vlm_dir(vlm_path: str | Path | None, config: SmolVLAConfig) -> Path:
    """The local VLM directory: ``vlm_path`` if given, else ``config.vlm_model_name``."""
    candidate = Path(vlm_path) if vlm_path is not None else Path(config.vlm_model_name)
    if not (candidate / "config.json").is_file():
        repo = config.vlm_model_name if vlm_path is None else DEFAULT_VLM
        raise FileNotFoundError(
            f"no SmolVLM directory at {str(candidate)!r} (config.json missing). This package never downloads: "
            f"fetch it once with `hf download {repo} --local-dir <dir>` and pass vlm_path=<dir> "
            f"(or build a tiny one with build_tiny_vlm).")
    return candidate


def load_vlm_config(vlm_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(vlm_dir), local_files_only=True)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@dataclass
class PreparedInputs:
    """Model-ready tensors (normalised, padded, tokenised) derived from one batch."""

    images: list[Tensor]
    img_masks: list[Tensor]
    lang_tokens: Tensor
    lang_masks: Tensor
    state: Tensor
    actions: Tensor | None = None
    action_is_pad: Tensor | None = None
    extra_groups: list[TokenGroup] = field(default_factory=list)   # branch tokens (before the state)


class SmolVLAPolicy(nn.Module):
    """LeRobot-compatible SmolVLA. Child modules: ``model`` (a :class:`VLAFlowMatching`) and
    ``branches`` (a :class:`PolicyBranches`, empty when no branch has parameters), so with the
    branches off ``state_dict()`` keys are exactly those of a LeRobot ``model.safetensors``."""

    name = "smolvla"

    def __init__(self, config: SmolVLAConfig, vlm_path: str | Path | None = None,
                 dataset_stats: Mapping[str, Mapping[str, Any]] | None = None, tokenizer: Any = None, *,
                 branches: BranchesConfig | Mapping[str, Any] | None = None,
                 _processors: ProcessorSpec | None = None, _empty: bool = False, _defer_stats: bool = False):
        """A fresh policy (random expert/heads; the VLM random too unless ``load_vlm_weights``).

        ``dataset_stats`` ``{feature: {stat: array}}`` are required for every feature whose type is
        normalised (STATE / ACTION: MEAN_STD by default).
        ``branches``: a branch spec (dict or :class:`BranchesConfig`); the features they read must be
        in ``config.input_features`` (see ``branch_input_features``). Branch weights are drawn after
        the model's, so the model is initialised as without branches for the same seed.
        """
        super().__init__()
        self.config = config
        self.vlm_dir = resolve_vlm_dir(vlm_path, config)
        proc = _processors or ProcessorSpec()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(proc.tokenizer_dir or self.vlm_dir)
        self.tokenizer_max_length = proc.tokenizer_max_length or config.tokenizer_max_length
        self.padding = proc.padding or config.pad_language_to
        vlm_config = load_vlm_config(self.vlm_dir)
        special_ids = None
        if config.add_image_special_tokens:
            special_ids = tuple(self._token_id(t) for t in (FAKE_IMAGE, GLOBAL_IMAGE))
        if _empty:
            # Shapes only: from_pretrained assigns every tensor from the file (the VLM weights
            # come from the checkpoint, never from the VLM directory, whatever load_vlm_weights says).
            with torch.device("meta"):
                self.model = VLAFlowMatching(config, vlm_config, special_ids)
        else:
            vlm = None
            if config.load_vlm_weights:
                from transformers import SmolVLMForConditionalGeneration

                vlm = SmolVLMForConditionalGeneration.from_pretrained(
                    str(self.vlm_dir), dtype=torch.bfloat16, local_files_only=True)
            self.model = VLAFlowMatching(config, vlm_config, special_ids, vlm=vlm)
        self._init_branches(branches, meta=_empty)
        self.normalizer = self.unnormalizer = None
        self.eps = proc.eps
        self._token_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        if not _defer_stats:
            self._set_stats(dataset_stats, proc)
        self.reset()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: SmolVLAConfig | None = None, *, vlm_path: str | Path | None = None,
                    dataset_stats: Mapping[str, Mapping[str, Any]] | None = None, tokenizer: Any = None,
                    branches: BranchesConfig | Mapping[str, Any] | None = None,
                    **overrides: Any) -> "SmolVLAPolicy":
        """A fresh random policy; ``overrides`` are SmolVLAConfig fields (applied to ``config``)."""
        config = (config or SmolVLAConfig()).replace(**overrides) if overrides else (config or SmolVLAConfig())
        return cls(config, vlm_path=vlm_path, dataset_stats=dataset_stats, tokenizer=tokenizer, branches=branches)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, vlm_path: str | Path | None = None, *,
                        dataset_stats: Mapping[str, Mapping[str, Any]] | None = None, tokenizer: Any = None,
                        dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        config_overrides: Mapping[str, Any] | None = None,
                        branches: BranchesConfig | Mapping[str, Any] | None = None) -> "SmolVLAPolicy":
        """Load a LeRobot SmolVLA checkpoint directory strictly.

        Every tensor of ``model.safetensors`` must be a parameter of the model built from
        ``config.json`` and every parameter must be in the file, with the same shape; otherwise
        one :class:`CheckpointKeyError` lists all missing / unexpected / mis-shaped keys.

        ``dtype``: ``None`` keeps each tensor's dtype from the file (smolvla_base: bf16 backbone,
        fp32 heads); a torch dtype casts every floating tensor; ``"lerobot"`` casts each tensor to
        the dtype LeRobot's own construction gives that parameter before it copies the file into
        it (from the VLM config's dtypes: with SmolVLM2's config the text decoder and expert are
        bf16, the vision tower, connector, lm_head, heads and cross-attention k/v fp32).
        ``dataset_stats`` replaces the checkpoint's normalisation stats (as LeRobot's processor
        overrides do). ``config_overrides`` that change the features (or the normalisation mapping)
        also decide what is normalised, in place of the processor JSONs. The policy is returned in
        eval mode.

        The branches are those of ``branches.json`` when the directory has one (their weights are
        then part of the strict check); without it the checkpoint is a plain SmolVLA. ``branches``
        given for a plain checkpoint adds fresh, randomly initialised branches (fine-tuning a base
        model with new sensors); given for a branch checkpoint it must equal its ``branches.json``.
        """
        root = Path(checkpoint_dir)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (root / name).is_file():
                raise CheckpointError(f"{root}: {name} is missing; not a SmolVLA checkpoint directory")
        config = SmolVLAConfig.load(root / CONFIG_FILE)
        if config_overrides:
            config = config.replace(**config_overrides)
        proc = read_processors(root)
        if config_overrides and {"input_features", "output_features"} & set(config_overrides):
            # New features are a new contract: normalise what the config lists (e.g. a branch's
            # force), not what the checkpoint's processor JSONs listed.
            proc.norm_features = proc.output_norm_features = None
        if config_overrides and "normalization_mapping" in config_overrides:
            proc.norm_map = None
        saved = read_branches_file(root)
        fresh = parse_branches(branches) if branches is not None and saved is None else None
        if branches is not None and saved is not None and parse_branches(branches) != saved:
            raise ValueError(f"{root / BRANCHES_FILE}: the checkpoint's branches {saved.to_dict()} differ from "
                             f"the requested {parse_branches(branches).to_dict()}")
        policy = cls(config, vlm_path=vlm_path, dataset_stats=None, tokenizer=tokenizer, branches=saved,
                     _processors=proc, _empty=True, _defer_stats=True)
        from safetensors.torch import load_file

        weights = load_file(str(root / WEIGHTS_FILE))
        legacy = split_legacy_stats(weights, config)
        if dtype == "lerobot":
            built = {k: v.dtype for k, v in policy.state_dict().items()}
            weights = {k: (v.to(built[k]) if k in built and v.is_floating_point() else v)
                       for k, v in weights.items()}
        elif isinstance(dtype, str):
            raise ValueError(f"dtype must be None, a torch dtype or 'lerobot', got {dtype!r}")
        policy._load_weights(root / WEIGHTS_FILE, weights)
        if fresh is not None:
            policy._init_branches(fresh)
        if legacy and not proc.input_stats:
            proc.input_stats = proc.output_stats = legacy
        policy._set_stats(dataset_stats, proc)
        if isinstance(dtype, torch.dtype):
            policy.to(dtype=dtype)
        if device is not None:
            policy.to(device)
        policy.eval()
        return policy

    def _load_weights(self, path: Path, weights: dict[str, Tensor]) -> None:
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in weights.items()}
        tied = self._tied_aliases()
        # Of two tied names (e.g. lm_head / embed_tokens with tie_word_embeddings), a file may
        # hold either one: savers that de-duplicate shared tensors keep only one of them.
        optional = {name for pair in tied.items() for name in pair
                    if name not in found and any(other in found for other in pair)}
        check_keys(path, expected, found, optional)
        for alias, source in tied.items():
            if source not in weights:
                weights[source] = weights[alias]
            weights.setdefault(alias, weights[source])
        self.load_state_dict(weights, strict=True, assign=True)
        for alias, source in tied.items():  # re-tie what assign untied
            owner, attr = self._owner(alias)
            setattr(owner, attr, self._owner_param(source))
        self._materialize_meta_buffers()
        self.model.set_requires_grad()
        self.branches.requires_grad_(True)      # new modules: trained whatever train_expert_only says

    def _init_branches(self, branches: BranchesConfig | Mapping[str, Any] | None, meta: bool = False) -> None:
        """Build ``self.branches`` (on the meta device when a checkpoint will assign the weights)."""
        self.branch_config = parse_branches(branches)
        width = self.model.vlm_with_expert.config.text_config.hidden_size
        with torch.device("meta") if meta else contextlib.nullcontext():
            self.branches = PolicyBranches(self.branch_config, self.config, width)

    def _tied_aliases(self) -> dict[str, str]:
        """Parameter names that share one tensor with an earlier name -> that earlier name."""
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                aliases[name] = first[id(p)]
            else:
                first[id(p)] = name
        return aliases

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        module_name, _, attr = name.rpartition(".")
        return self.get_submodule(module_name), attr

    def _owner_param(self, name: str) -> nn.Parameter:
        owner, attr = self._owner(name)
        return getattr(owner, attr)

    def _materialize_meta_buffers(self) -> None:
        """Rebuild modules whose (non-persistent) buffers are still on the meta device: the Llama
        rotary embeddings, unused by SmolVLA's own RoPE but kept so the modules stay usable."""
        for name, module in list(self.named_modules()):
            if not any(b.is_meta for b in module.buffers(recurse=False)):
                continue
            if not hasattr(module, "config"):
                raise RuntimeError(f"module {name} has uninitialised buffers after loading")
            owner, attr = self._owner(name)
            setattr(owner, attr, type(module)(config=module.config))

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token!r} token (needed by add_image_special_tokens)")
        return int(tid)

    def _set_stats(self, dataset_stats, proc: ProcessorSpec) -> None:
        cfg = self.config
        norm_map = proc.norm_map or cfg.normalization_mapping
        in_features = proc.norm_features or {**cfg.input_features, **cfg.output_features}
        out_features = proc.output_norm_features or cfg.output_features
        self.eps = proc.eps
        in_stats = dataset_stats if dataset_stats is not None else proc.input_stats
        out_stats = dataset_stats if dataset_stats is not None else (proc.output_stats or proc.input_stats)
        self.normalizer = Normalizer(in_features, norm_map, in_stats, eps=proc.eps)
        self.unnormalizer = Normalizer(out_features, norm_map, out_stats, eps=proc.eps)

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write LeRobot's directory layout (0.4.4-readable); tensors keep their dtypes.

        With a branch on, also ``branches.json`` (branch weights are ``branches.*`` in
        ``model.safetensors``); other files in ``directory`` are left alone.
        """
        stats = self.normalizer.flat_stats()
        for key, value in self.unnormalizer.flat_stats().items():
            stats.setdefault(key, value)
        root = write_checkpoint(directory, self.config, self.state_dict(), stats, eps=self.eps)
        if self.branch_config.any_on:
            write_branches_file(root, self.branch_config)
        else:
            (root / BRANCHES_FILE).unlink(missing_ok=True)   # a stale sidecar would add branches on load
        return root

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    def prepare_inputs(self, batch: Mapping[str, Any]) -> PreparedInputs:
        """Convert stored dtypes (:func:`to_model_input`), tokenise, normalise, resize/pad images and
        pad state/actions (LeRobot's preprocessor followed by SmolVLAPolicy.prepare_*), applying the
        branches (see PolicyBranches)."""
        device = self.device
        # Stored / device dtypes (uint8 images, uint16 mm depth) are converted on the model's device
        # by the same function as the DataModule's; a wrong dtype, range or layout is refused here.
        batch = to_model_input(batch, device=device)
        batch = self.branches.before_normalization(batch)
        if LANG_TOKENS in batch:
            lang_tokens = batch[LANG_TOKENS]
            lang_masks = batch.get(LANG_MASK, torch.ones_like(lang_tokens, dtype=torch.bool)).bool()
        elif "task" in batch:
            lang_tokens, lang_masks = self._tokenize(batch["task"], device)
        else:
            raise KeyError("batch has neither 'task' nor 'observation.language.tokens'")
        batch = self.normalizer.normalize_batch(batch)
        if self.config.adapt_to_pi_aloha:
            batch[STATE] = aloha.decode_state(batch[STATE])
            if ACTION in batch:
                batch[ACTION] = aloha.encode_actions_inv(batch[ACTION])
        images, img_masks = prepare_images(batch, list(self.config.image_features),
                                           self.config.resize_imgs_with_padding, self.config.empty_cameras)
        state = prepare_state(self.branches.extend_state(batch[STATE], batch), self.config.max_state_dim)
        actions = pad_last_dim(batch[ACTION], self.config.max_action_dim) if ACTION in batch else None
        return PreparedInputs(images, img_masks, lang_tokens, lang_masks, state, actions, batch.get(ACTION_IS_PAD),
                              self.branches.token_groups(batch))

    def _tokenize(self, tasks: str | Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """:func:`tokenize_tasks` with this policy's settings, memoised by the task texts and those
        settings. Returns copies: callers may edit them."""
        key = (self.tokenizer, self.tokenizer_max_length, self.padding,
               (tasks,) if isinstance(tasks, str) else tuple(tasks))
        hit = self._token_cache.get(key)
        if hit is None:
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            hit = self._token_cache[key] = tokenize_tasks(self.tokenizer, tasks, self.tokenizer_max_length,
                                                          self.padding)
        return hit[0].to(device, copy=True), hit[1].to(device, copy=True)

    # ---------------------------------------------------------------- training
    def flow_terms(self, batch: Mapping[str, Any], noise: Tensor | None = None, time: Tensor | None = None,
                   extra_groups: Sequence[TokenGroup] = ()) -> tuple[PreparedInputs, FlowTerms]:
        inp = self.prepare_inputs(batch)
        if inp.actions is None:
            raise KeyError("training needs 'action' in the batch")
        terms = self.model.flow_terms(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                      inp.actions, noise, time, [*inp.extra_groups, *extra_groups])
        return inp, terms

    def compute_loss(self, batch: Mapping[str, Any], noise: Tensor | None = None, time: Tensor | None = None,
                     reduction: str = "mean") -> tuple[Tensor, Tensor]:
        """(loss, per_element_loss) following LeRobot's current reduction.

        ``per_element_loss`` is (B, T, action_dim): the squared error cropped to the true action
        dims with entries where ``action_is_pad`` zeroed. ``loss`` is its sum over the valid entries
        divided by their count (a plain mean when the batch has no ``action_is_pad``); with
        ``reduction="none"`` it is that per sample, shape (B,).
        ``noise`` is (B, chunk_size, 32) as LeRobot draws it; ``time`` (B,).
        """
        inp, terms = self.flow_terms(batch, noise, time)
        losses = terms.losses[:, :, : self.action_dim]
        is_pad = inp.action_is_pad
        if is_pad is not None:
            losses = losses * (~is_pad.bool()).unsqueeze(-1)
        if reduction == "mean":
            if is_pad is None:
                loss = losses.mean()
            else:
                n_valid = ((~is_pad.bool()).sum() * losses.shape[-1]).clamp_min(1)
                loss = losses.sum() / n_valid
        elif reduction == "none":
            if is_pad is None:
                loss = losses.mean(dim=(1, 2))
            else:
                n_valid = ((~is_pad.bool()).sum(dim=1) * losses.shape[-1]).clamp_min(1)
                loss = losses.sum(dim=(1, 2)) / n_valid
        else:
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        return loss, losses

    def forward(self, batch: Mapping[str, Any], noise: Tensor | None = None,
                time: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.compute_loss(batch, noise, time)

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None,
                             use_cache: bool | None = None) -> Tensor:
        """(B, chunk_size, action_dim) actions in robot units (unnormalised with the checkpoint stats)."""
        self._check_rtc()
        if any(module.training for module in self.modules()):   # eval() walks every module: only when needed
            self.eval()
        inp = self.prepare_inputs(batch)
        actions = self.model.sample_actions(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                            noise=None if noise is None else noise.to(self.device),
                                            use_cache=use_cache, extra_groups=inp.extra_groups)
        actions = actions[:, :, : self.action_dim]
        if self.config.adapt_to_pi_aloha:
            actions = aloha.encode_actions(actions)
        return self.unnormalizer.unnormalize(ACTION, actions)

    @torch.no_grad()
    def select_action(self, batch: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        """One action (B, action_dim) in robot units; a new chunk is sampled every ``n_action_steps``."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch, noise)
            self._queue.extend(chunk[:, : self.config.n_action_steps].transpose(0, 1))
        return self._queue.popleft()

    def reset(self) -> None:
        """Call at the start of every episode: drops queued actions."""
        self._queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def _check_rtc(self) -> None:
        rtc = self.config.rtc_config
        if rtc and rtc.get("enabled", False):
            raise NotImplementedError("Real-Time Chunking (rtc_config.enabled) is not implemented")


__all__ = ["SmolVLAPolicy", "SmolVLAConfig", "PolicyFeature", "PreparedInputs", "resolve_vlm_dir"]
