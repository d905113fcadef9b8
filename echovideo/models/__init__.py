from echovideo.models.transformer import EchoVideoTransformer3DModel

__all__ = ["EchoVideoTransformer3DModel"]
