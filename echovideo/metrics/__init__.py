"""Scores of a finished clip, apart from the model that made it: identity and motion per clip (`quality`,
which a render computes on its own frames), the paper's evaluation (`consisid_eval`: FaceSim-Arc/Cur with
`curricularface`, CLIPScore with `clipscore`, FID with `inception`), optical flow (`raft`), user-supplied
ONNX graphs (`user_onnx`) and the Inception export (`inception_export`).

May import: the rest of `echovideo` (the face stage, images, video I/O). The model and pipeline never import
these modules except `quality`, the per-clip scores a render writes next to its video.
"""
