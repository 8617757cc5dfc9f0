"""SD3 prompt encoding with a cache, so the text encoders can leave memory once a task's prompts are known.

DICEPTION conditions on a handful of fixed task prompts (`[[image2depth]]`, ...). Their embeddings
never change, yet SD3's three text encoders are 5.5 B parameters (T5-XXL alone is 4.7 B). So every
prompt is encoded once, kept in a `PromptCache` (saved as safetensors beside models and adapters),
and the encoders can be dropped before training or inference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from adaptkit.errors import FileError
from adaptkit.files import read_safetensors

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase, T5EncoderModel

PROMPT_CACHE_FILE = "prompt_embeds.safetensors"

#: Point prompts per image: DICEPTION's point encoder always takes five tokens (unused ones are padding). Here,
#: beside the text prompts, so that data loading checks a point-prompt file without importing the model.
MAX_POINTS = 5


class PromptCache:
    """Prompt string -> (sequence embeddings, pooled embeddings), saved as one safetensors file."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def prompts(self) -> list[str]:
        return list(self._entries)

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._entries[prompt]

    def put(self, prompt: str, embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        self._entries[prompt] = (embeds.detach().cpu().contiguous(), pooled.detach().cpu().contiguous())

    def subset(self, prompts: list[str]) -> PromptCache:
        """A cache holding only `prompts` (e.g. an adapter's own task prompt and the empty prompt)."""
        cache = PromptCache()
        for prompt in prompts:
            cache.put(prompt, *self.get(prompt))
        return cache

    def save(self, path: str | Path) -> None:
        tensors, names = {}, []
        for index, (prompt, (embeds, pooled)) in enumerate(self._entries.items()):
            tensors[f"{index}.embeds"], tensors[f"{index}.pooled"] = embeds, pooled
            names.append(prompt)
        save_file(tensors, str(path), metadata={"prompts": json.dumps(names)})

    @classmethod
    def load(cls, path: str | Path) -> PromptCache:
        fix = "the file is damaged: copy it again (or retrain the adapter)"
        tensors, metadata = read_safetensors(path, "prompt embeddings", fix)
        try:
            names = json.loads(metadata["prompts"])
            cache = cls()
            for index, prompt in enumerate(names):
                cache.put(prompt, tensors[f"{index}.embeds"], tensors[f"{index}.pooled"])
        except (KeyError, TypeError, ValueError) as error:
            raise FileError(path, f"not an adaptkit prompt cache ({error!r} missing or malformed)", fix) from None
        return cache


class PromptEncoder(nn.Module):
    """SD3's three text encoders behind a cache.

    The encoding itself is diffusers' `StableDiffusion3Pipeline.encode_prompt` (CLIP-L and CLIP-G
    penultimate states concatenated and zero-padded to T5's width, then T5 states along the
    sequence; pooled = CLIP-L pooled ++ CLIP-G pooled), so it is exactly SD3's.
    """

    def __init__(self, text_encoder: CLIPTextModelWithProjection | None, tokenizer: PreTrainedTokenizerBase | None,
                 text_encoder_2: CLIPTextModelWithProjection | None, tokenizer_2: PreTrainedTokenizerBase | None,
                 text_encoder_3: T5EncoderModel | None, tokenizer_3: PreTrainedTokenizerBase | None,
                 max_sequence_length: int = 256, cache: PromptCache | None = None) -> None:
        super().__init__()
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = text_encoder, text_encoder_2, text_encoder_3
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        self.max_sequence_length = max_sequence_length
        self.cache = cache or PromptCache()

    @property
    def has_text_encoders(self) -> bool:
        return self.text_encoder is not None

    def drop_text_encoders(self) -> None:
        """Free the text encoders; prompts already in the cache keep working."""
        self.text_encoder = self.text_encoder_2 = self.text_encoder_3 = None

    @torch.inference_mode()
    def _encode_uncached(self, prompts: list[str]) -> None:
        from transformers.utils import logging as transformers_logging

        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # importing the pipeline warns about unused image parts
        try:
            from diffusers import StableDiffusion3Pipeline
        finally:
            transformers_logging.set_verbosity(verbosity)
        pipeline = StableDiffusion3Pipeline(
            transformer=None, scheduler=None, vae=None,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3,
        )
        device = next(self.text_encoder.parameters()).device
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        for prompt, embed, pool in zip(prompts, embeds, pooled, strict=True):
            self.cache.put(prompt, embed.float(), pool.float())

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) sequence embeddings and (B, P) pooled embeddings for `prompts`, on the CPU in fp32."""
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            if not self.has_text_encoders:
                raise KeyError(
                    f"prompt(s) {missing} are not in the prompt cache and the text encoders are not loaded; "
                    f"cached prompts: {self.cache.prompts}. Load the generalist with its text encoders "
                    "to encode a new prompt."
                )
            self._encode_uncached(missing)
        pairs = [self.cache.get(p) for p in prompts]
        return torch.stack([e for e, _ in pairs]), torch.stack([p for _, p in pairs])
