"""Prompt (T5) and face-image (SigLIP) encoders, loaded from the checkpoint's subfolders."""

import logging

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)
TEXT_TOKENS = 226


class PromptEncoder:
    """T5 v1.1 encoder: pad/truncate to 226 tokens, no attention mask (pads are encoded, as released).

    The encoder lives on the CPU and visits the accelerator only while encoding: the released T5-XXL is
    9.5 GB in bf16, memory the DiT needs during denoising.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        for prompt in prompts:
            length = len(self.tokenizer(prompt, add_special_tokens=True).input_ids)
            if length > TEXT_TOKENS:
                logger.warning("prompt is %d tokens; truncated to %d: %r", length, TEXT_TOKENS, prompt[:80])
        return self.tokenizer(prompts, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                              add_special_tokens=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ids = self.token_ids(prompts)
        home = next(self.text_encoder.parameters()).device
        self.text_encoder.to(device)
        try:
            embeds = self.text_encoder(ids.to(device))[0]
        finally:
            self.text_encoder.to(home)
        return embeds.to(dtype)


class FaceImageEncoder:
    """SigLIP vision tower: aligned parsed face -> its last_hidden_state tokens (after post-layernorm)."""

    def __init__(self, processor, vision_model: PreTrainedModel) -> None:
        self.processor = processor
        self.vision_model = vision_model.eval()

    @torch.no_grad()
    def encode(self, faces: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        pixels = self.processor(images=[Image.fromarray(f) for f in faces], return_tensors="pt").pixel_values
        return self.vision_model(pixel_values=pixels.to(device, self.vision_model.dtype)).last_hidden_state.to(dtype)
