"""Models the user points `eval` at as ONNX files (InceptionV3, RAFT): nothing is downloaded, and a missing
runtime or a file that is not a model is one line naming the flag, never onnxruntime's traceback."""

from pathlib import Path

from echovideo.errors import EchoVideoInputError


def user_onnx_session(path: str | Path, flag: str, export_hint: str):
    """An onnxruntime session on the CPU for the model at `path`, given by the command-line `flag`."""
    try:
        import onnxruntime
    except ImportError:
        raise EchoVideoInputError(flag, "onnxruntime is not installed",
                                  "pip install 'echovideo[face]' (it never changes your torch)") from None
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a missing, truncated or non-ONNX file
        raise EchoVideoInputError(flag, f"{path} is not a readable ONNX model ({str(exc)[:160]})",
                                  export_hint) from None
