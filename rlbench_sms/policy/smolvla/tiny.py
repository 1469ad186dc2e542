"""VLM directories made in code: a tiny random SmolVLM (tests, demo) and the real SmolVLM2-500M config.

A "VLM directory" is what ``vlm_path`` / ``vlm_model_name`` point at: a transformers
``config.json`` (``model_type: smolvlm``) plus tokenizer files, optionally processor files and
weights. :func:`build_tiny_vlm` writes one offline in well under a second:

- the config: SigLIP-like vision tower (hidden 32, 2 layers, 2 heads, **image 512, patch 16** so an
  image still gives 32 x 32 patches -> pixel shuffle x4 -> **64 tokens**), a Llama text decoder
  (hidden 64, 6 layers, 4 heads, 2 KV heads, head_dim 16, RMSNorm eps 1e-5), untied ``lm_head``;
- a byte-level BPE tokenizer trained with the ``tokenizers`` library on a fixed robot-task corpus,
  laid out like SmolVLM2's: ``<|endoftext|>`` (unk) = 0, ``<|im_start|>`` (bos) = 1, ``<|im_end|>``
  (pad) = 2, the image tokens ``<fake_token_around_image>``, ``<image>``, ``<global-img>`` and
  ``<end_of_utterance>`` (eos); no template post-processor, so like the real one it adds no BOS/EOS;
  ``truncation_side="left"`` as in the real tokenizer config.

Loading the tiny directory needs nothing but ``local_files_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from transformers import SmolVLMConfig

from .config import PolicyFeature, SmolVLAConfig

UNK, BOS, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE = ("<fake_token_around_image>", "<image>", "<global-img>",
                                                     "<end_of_utterance>")
SPECIAL_TOKENS = [UNK, BOS, PAD, FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE]

_CORPUS = [
    "pick up the red cube and place it in the bowl",
    "push the green block to the left edge of the table",
    "open the top drawer and put the sponge inside",
    "grasp the blue cup by its handle and lift it",
    "stack the yellow cube on top of the red cube",
    "insert the peg into the hole with a gentle force",
    "move the arm to the home position and open the gripper",
    "wipe the table with the cloth from left to right",
    "Pick the object, then release it above the box.\n",
    "rotate the wrist by ninety degrees before grasping",
]

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=512, patch_size=16)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=100000.0)
TINY_VOCAB = 512


def build_tokenizer(vocab_size: int = TINY_VOCAB):
    """A deterministic byte-level BPE ``PreTrainedTokenizerFast`` with SmolVLM2's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, bos_token=BOS, eos_token=END_OF_UTTERANCE, pad_token=PAD,
        extra_special_tokens={"fake_image_token": FAKE_IMAGE, "image_token": IMAGE,
                              "global_image_token": GLOBAL_IMAGE, "end_of_utterance_token": END_OF_UTTERANCE},
        truncation_side="left", model_max_length=8192)


def tiny_vlm_config(vocab_size: int, pad_token_id: int, image_token_id: int, **text_overrides: Any) -> SmolVLMConfig:
    text = dict(TINY_TEXT, model_type="llama", vocab_size=vocab_size, pad_token_id=pad_token_id,
                tie_word_embeddings=False, **text_overrides)
    return SmolVLMConfig(vision_config=dict(TINY_VISION), text_config=text, scale_factor=4,
                         image_token_id=image_token_id, tie_word_embeddings=False)


def smolvlm2_500m_config() -> SmolVLMConfig:
    """SmolVLM2-500M-Video-Instruct's architecture, built in code (lerobot_facts.md 1.2).

    Vision: hidden 768, 12 layers, 12 heads, MLP 3072, image 512, patch 16. Text (SmolLM2-360M):
    hidden 960, MLP 2560, 32 layers, 15 heads, 5 KV heads, head_dim 64, vocab 49280, RMSNorm 1e-5,
    rope_theta 100000, untied. Connector: pixel shuffle x4 -> Linear(12288 -> 960, no bias).
    """
    return SmolVLMConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=49280, hidden_size=960, intermediate_size=2560,
                         num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                         rms_norm_eps=1e-5, rope_theta=100000.0, pad_token_id=2, max_position_embeddings=8192,
                         tie_word_embeddings=False),
        scale_factor=4, image_token_id=49190, tie_word_embeddings=False)


def build_tiny_vlm(directory: str | Path, *, with_weights: bool = False, seed: int = 0,
                   **text_overrides: Any) -> Path:
    """Write a tiny SmolVLM directory (config + tokenizer + processor JSONs); returns its path.

    ``with_weights`` also saves random weights (``model.safetensors``), for ``load_vlm_weights``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    cfg = tiny_vlm_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(IMAGE),
                          **text_overrides)
    cfg.save_pretrained(directory)
    # Processor files so transformers' AutoProcessor (and LeRobot, which loads one) can read the dir.
    (directory / "processor_config.json").write_text(json.dumps(
        {"image_seq_len": 64, "processor_class": "SmolVLMProcessor"}, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True, "do_image_splitting": False, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "SmolVLMImageProcessor", "max_image_size": {"longest_edge": 512},
        "processor_class": "SmolVLMProcessor", "resample": 1, "rescale_factor": 1 / 255,
        "size": {"longest_edge": 512}}, indent=2))
    if with_weights:
        import torch
        from transformers import SmolVLMForConditionalGeneration

        torch.manual_seed(seed)
        SmolVLMForConditionalGeneration(cfg).save_pretrained(directory)
    return directory


def make_features(state_dim: int = 6, action_dim: int = 6, cameras: Sequence[str] = ("front",),
                  image_shape: tuple[int, int, int] = (3, 480, 640)) -> tuple[dict, dict]:
    """LeRobot-style (input_features, output_features) for state + cameras -> action."""
    inputs = {f"observation.images.{c}": PolicyFeature("VISUAL", image_shape) for c in cameras}
    inputs["observation.state"] = PolicyFeature("STATE", (state_dim,))
    return inputs, {"action": PolicyFeature("ACTION", (action_dim,))}


def tiny_config(vlm_path: str | Path, *, state_dim: int = 6, action_dim: int = 6,
                cameras: Sequence[str] = ("front",), image_shape: tuple[int, int, int] = (3, 480, 640),
                **overrides: Any) -> SmolVLAConfig:
    """A SmolVLA config over a tiny VLM dir: LeRobot defaults except 4 kept VLM layers."""
    inputs, outputs = make_features(state_dim, action_dim, cameras, image_shape)
    fields = dict(input_features=inputs, output_features=outputs, vlm_model_name=str(vlm_path), num_vlm_layers=4,
                  device="cpu")
    fields.update(overrides)
    return SmolVLAConfig(**fields)
