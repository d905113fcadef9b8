"""One generation across many devices: Ulysses + ring sequence parallelism and CFG parallelism.

Works on any initialised torch.distributed default group (gloo, nccl, hccl); never imports Ray.
"""

from parallel.config import ParallelConfig
from parallel.mesh import ParallelMesh
from parallel.dit import SequenceParallelDiT

__all__ = ["ParallelConfig", "ParallelMesh", "SequenceParallelDiT"]
