"""CLIPScore as ConsisID's `eval/get_clipscore.py` computes it, with the user's CLIP weights (a local
`CLIPModel` folder, e.g. openai/clip-vit-base-patch32; nothing is downloaded):

- 16 frames at `int(i * n / 16)` (not FaceSim's `linspace`);
- the frames handed to `CLIPProcessor` as OpenCV decodes them, BGR, which the processor reads as RGB: the
  script's quirk, kept, because a number computed otherwise does not sit next to the published ones;
- the prompt padded and truncated to CLIP's 77 tokens; `logits_per_image` (exp(logit_scale) x cosine) averaged
  over the 16 frames.
Transformers 5 runs CLIP's PIL image processor where torchvision is absent (it says so); the script's era
(transformers 4.4x) had only that one.
"""

from pathlib import Path

import numpy as np

from echovideo.errors import EchoVideoInputError

FRAMES = 16


def clip_frame_indices(count: int) -> list[int]:
    return [int(i * count / FRAMES) for i in range(FRAMES)]


class ClipScore:
    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EchoVideoInputError("--clip", f"{folder} is not a CLIP model folder ({str(exc)[:160]})",
                                      "point at a saved CLIPModel, e.g. a copy of openai/clip-vit-base-patch32") from None

    def __call__(self, frames_rgb: np.ndarray, prompt: str) -> float:
        import torch

        bgr = [np.ascontiguousarray(frames_rgb[i][..., ::-1]) for i in clip_frame_indices(len(frames_rgb))]
        inputs = self.processor(text=prompt, images=bgr, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            return float(self.model(**inputs).logits_per_image.mean())
