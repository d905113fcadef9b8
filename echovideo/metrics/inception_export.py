"""Write the Inception ConsisID's evaluation uses as the ONNX `eval --inception` reads, from your own torchvision
(nothing here downloads; torchvision fetches its weights as it always does), and check the export against
torchvision before keeping it:

    python -m echovideo.metrics.inception_export inception.onnx

The model is `torchvision.models.inception_v3(weights=Inception_V3_Weights.DEFAULT)` with `fc = Identity`, as
ConsisID's `eval/get_facesim_fid.py` builds it. Those weights turn `transform_input` on: the first layers map
ImageNet-normalised input back to the [-1, 1] the original Inception saw. A bare `inception_v3()` with the same
weights loaded has it off and gives other features; `TRANSFORM_SCALE`/`TRANSFORM_SHIFT` are the constants the
graph must hold, which `eval --protocol consisid --inception` checks at load.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRANSFORM_SCALE = tuple(std / 0.5 for std in IMAGENET_STD)  # torchvision's Inception3._transform_input
TRANSFORM_SHIFT = tuple((mean - 0.5) / 0.5 for mean in IMAGENET_MEAN)
CHECK_TOLERANCE = 1e-4  # onnxruntime against torch, relative to the features' scale


def has_input_transform(path: str | Path) -> bool:
    """Whether the graph holds torchvision's input transform: every one of its six constants."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer) + [attribute.t for node in model.graph.node if node.op_type == "Constant"
                                               for attribute in node.attribute if attribute.name == "value"]
    arrays = [numpy_helper.to_array(tensor) for tensor in tensors]
    scalars = np.array([float(array.reshape(-1)[0]) for array in arrays if array.size == 1])
    return scalars.size > 0 and all(np.isclose(scalars, value, atol=1e-6).any()
                                    for value in TRANSFORM_SCALE + TRANSFORM_SHIFT)


def export(destination: Path) -> float:
    """-> the largest relative difference between torchvision and the written ONNX on random faces."""
    import onnxruntime
    import torch
    import torchvision

    model = torchvision.models.inception_v3(weights=torchvision.models.Inception_V3_Weights.DEFAULT)
    model.fc = torch.nn.Identity()
    model.eval()
    if not model.transform_input:
        raise RuntimeError("this torchvision's DEFAULT Inception weights do not turn transform_input on")
    faces = torch.rand(3, 1, 3, 299, 299)
    with tempfile.TemporaryDirectory(dir=destination.parent) as folder:
        written = Path(folder) / destination.name
        torch.onnx.export(model, (faces[0],), str(written), input_names=["x"], output_names=["features"],
                          opset_version=17, dynamo=False)
        session = onnxruntime.InferenceSession(str(written), providers=["CPUExecutionProvider"])
        worst = 0.0
        with torch.no_grad():
            for face in faces:
                want = model(face).numpy()
                got = session.run(None, {"x": face.numpy()})[0]
                worst = max(worst, float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12)))
        if worst > CHECK_TOLERANCE or not has_input_transform(written):
            raise RuntimeError(f"the export differs from torchvision (relative {worst:.2e}) or lost its input "
                               "transform: not written")
        written.replace(destination)
    return worst


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m echovideo.metrics.inception_export OUT.onnx", file=sys.stderr)
        return 2
    try:
        import torchvision  # noqa: F401  (yours: installing it here would replace the CPU torch)
    except ImportError:
        print("echovideo: torchvision is not installed here; run this where it is (it matches your torch)",
              file=sys.stderr)
        return 2
    worst = export(Path(args[0]).absolute())
    print(f"wrote {args[0]}: torchvision's inception_v3 (DEFAULT weights, fc = Identity, transform_input on); "
          f"largest relative difference to torchvision {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
