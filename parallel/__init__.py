"""One generation across many devices: Ulysses + ring sequence parallelism and CFG parallelism.

Works on any initialised torch.distributed default group (gloo, nccl, hccl); never imports Ray. The public
names load on first use, so reading a job's layout (`parallel.config`) never imports the model.
"""

from echovideo.lazy import lazy_names

_PUBLIC = {"ParallelConfig": "parallel.config", "ParallelMesh": "parallel.mesh", "SequenceParallelDiT": "parallel.dit"}
__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(globals(), _PUBLIC)
