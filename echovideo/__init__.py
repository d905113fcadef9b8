"""EchoVideo: identity-preserving human video generation (photo + prompt -> video).

The public names load on first use, so `echovideo --help`, `plan` and `echovideo.errors` never pay for torch
and diffusers."""

from echovideo.lazy import lazy_names

_PUBLIC = {"EchoVideoPipeline": "echovideo.pipeline", "EchoVideoTransformer3DModel": "echovideo.models",
           "GenerationOptions": "echovideo.sampling"}
__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(globals(), _PUBLIC)
