"""Generalists built from configs, with no download: small ones for tests and as the embedded default's seed,
and the real DICEPTION's shapes (`real_size_spec`) with seeded random weights, to rehearse a release offline.

They use the very classes of the real DICEPTION (SD3 transformer, SD3-style VAE, CLIP-L/CLIP-G/T5
text encoders and their tokenizers), only narrower and shallower, so every code path a user runs
on the real model is exercised on a laptop. The tokenizers are built from a small vocabulary in
memory: characters, plus whole-word tokens for the words task prompts use, so that a prompt such
as `[[image2semantic]] person` stays a handful of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from adaptkit.generalist import (
    DICEPTION_TASK_PROMPTS,
    Generalist,
    GeneralistConfig,
    InContextDenoiser,
    PointPromptEncoder,
)
from adaptkit.prompts import PromptEncoder

#: Words that get a token of their own (everything else is spelled out in characters).
PROMPT_WORDS = (
    "[[", "]]", "image", "2", "depth", "normal", "pose", "segmentation", "semantic", "entity", "person",
    "background", "ground", "sphere", "box", "cylinder", "shadow", "nearest", "boundary", "edge", "mask",
    "highlight", "crack", "lung", "tumour", "object", "blob", "ellipse", "ring", "curve", "cell", "nucleus",
    "polygon", "lungs", "cells", "foreground",
)


@dataclass
class TinySpec:
    """Sizes of a generalist built from configs. The defaults are the smallest useful for tests (~0.5 M
    parameters). The fields that default to None derive from the others as the small models need (and stay
    None in the specs recorded before they existed); `real_size_spec` sets them to SD3-medium's values."""

    resolution: int = 32
    layers: int = 2
    heads: int = 2
    head_dim: int = 16
    patch_size: int = 2
    vae_channels: tuple[int, ...] = (16, 32)
    vae_norm_groups: int = 8
    clip_dim: int = 16
    t5_dim: int = 48
    text_layers: int = 1
    max_tokens: int = 12
    num_frequencies: int = 16
    seed: int = 0
    name: str = "tiny"
    clip_g_dim: int | None = None  # CLIP-G's width (None: clip_dim, as CLIP-L)
    clip_max_tokens: int | None = None  # CLIP's token limit (None: max_tokens; SD3's CLIPs take 77)
    vae_layers: int | None = None  # resnet layers per VAE block (None: 1; SD3's VAE has 2)
    vae_sample_size: int | None = None  # the VAE config's sample_size (None: resolution)
    sample_size: int | None = None  # the transformer config's sample_size (None: the latent side)
    pos_embed_max_size: int | None = None  # the position-embedding grid (None: just the latent's patches)


def real_size_spec(layers: int = 24, resolution: int = 768) -> TinySpec:
    """The released DICEPTION's shapes: SD3-medium's transformer (24 x 1536, patch 2, joint width 4096, pooled
    2048, position grid 192), SD3's VAE (128-256-512-512, 2 layers per block) and text encoders of the real
    output widths (CLIP-L 768, CLIP-G 1280, T5 4096) but one layer each and a small vocabulary, so a whole
    release folder fits a small machine. `layers` cuts the transformer (2 for a CI-sized rehearsal)."""
    return TinySpec(resolution=resolution, layers=layers, heads=24, head_dim=64, patch_size=2,
                    vae_channels=(128, 256, 512, 512), vae_norm_groups=32, clip_dim=768, t5_dim=4096, text_layers=1,
                    max_tokens=256, num_frequencies=1024, name="diception", clip_g_dim=1280, clip_max_tokens=77,
                    vae_layers=2, vae_sample_size=1024, sample_size=128, pos_embed_max_size=192)


def build_clip_tokenizer(max_tokens: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over bytes, with merges that make each of `PROMPT_WORDS` one token."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in PROMPT_WORDS:
        pieces = [*list(word[:-1]), word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def build_t5_tokenizer(max_tokens: int) -> T5Tokenizer:
    """A T5 unigram tokenizer over printable ASCII, preferring whole `PROMPT_WORDS`."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(chr(code), -4.0) for code in range(33, 127)]
    vocab += [(prefix + word, -1.0) for word in PROMPT_WORDS if len(word) > 1 for prefix in ("", "▁")]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_tokens)


def build_tiny_generalist(spec: TinySpec | None = None, denoiser_dtype: torch.dtype | None = None) -> Generalist:
    """A randomly initialised generalist of `spec`'s sizes, identical for the same spec and seed.

    `denoiser_dtype` builds the transformer and point encoder directly in that dtype (bf16 for the real
    size: 4 GB, where building in fp32 first would hold 8 GB and then both copies).
    """
    spec = spec or TinySpec()
    torch.manual_seed(spec.seed)
    latent_side = spec.resolution // 2 ** (len(spec.vae_channels) - 1)
    inner = spec.heads * spec.head_dim
    clip_g_dim = spec.clip_g_dim or spec.clip_dim
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(denoiser_dtype or default_dtype)
    try:
        transformer = SD3Transformer2DModel(
            sample_size=spec.sample_size or latent_side, patch_size=spec.patch_size, in_channels=16,
            num_layers=spec.layers, attention_head_dim=spec.head_dim, num_attention_heads=spec.heads,
            joint_attention_dim=spec.t5_dim, caption_projection_dim=inner,
            pooled_projection_dim=spec.clip_dim + clip_g_dim, out_channels=16,
            pos_embed_max_size=spec.pos_embed_max_size or latent_side // 2 * 2,
        )
        point_encoder = PointPromptEncoder(embed_dim=inner, num_frequencies=spec.num_frequencies, seed=spec.seed)
    finally:
        torch.set_default_dtype(default_dtype)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
        block_out_channels=spec.vae_channels, layers_per_block=spec.vae_layers or 1,
        norm_num_groups=spec.vae_norm_groups, sample_size=spec.vae_sample_size or spec.resolution,
        shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
    )
    clip_tokens = spec.clip_max_tokens or spec.max_tokens
    clip_tokenizer = build_clip_tokenizer(clip_tokens)
    t5_tokenizer = build_t5_tokenizer(spec.max_tokens)

    def clip(width: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=width, intermediate_size=2 * width, projection_dim=width,
            num_attention_heads=2, num_hidden_layers=spec.text_layers + 1, vocab_size=len(clip_tokenizer),
            max_position_embeddings=clip_tokens, bos_token_id=0, eos_token_id=1, pad_token_id=1))

    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=spec.t5_dim, d_ff=2 * spec.t5_dim, d_kv=spec.t5_dim // 2,
        num_heads=2, num_layers=spec.text_layers, decoder_start_token_id=0))
    prompts = PromptEncoder(clip(spec.clip_dim), clip_tokenizer, clip(clip_g_dim), clip_tokenizer, t5, t5_tokenizer,
                            max_sequence_length=spec.max_tokens)
    config = GeneralistConfig(name=spec.name, resolution=spec.resolution, max_sequence_length=spec.max_tokens,
                              task_prompts=dict(DICEPTION_TASK_PROMPTS))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    generalist = Generalist(InContextDenoiser(transformer, point_encoder), vae, prompts, scheduler, config)
    return generalist.eval()
