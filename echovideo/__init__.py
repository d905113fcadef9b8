"""EchoVideo: identity-preserving human video generation (photo + prompt -> video)."""

from echovideo.models import EchoVideoTransformer3DModel
from echovideo.pipeline import EchoVideoPipeline
from echovideo.sampling import GenerationOptions

__all__ = ["EchoVideoPipeline", "EchoVideoTransformer3DModel", "GenerationOptions"]
