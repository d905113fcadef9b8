"""EchoVideo: identity-preserving human video generation (photo + prompt -> video)."""

from echovideo.models import EchoVideoTransformer3DModel

__all__ = ["EchoVideoTransformer3DModel"]
