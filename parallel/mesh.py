"""Rank layout and process groups: CFG outermost, then ring, Ulysses innermost on contiguous ranks.

With c2 x r2 x u2 on 8 ranks: sequence groups [0-3] [4-7]; CFG pairs [0,4] [1,5] ...; Ulysses [0,1]
[2,3] ...; ring [0,2] [1,3] ... (the xDiT/ParaAttention order: the slowest link carries the least).
"""

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from parallel.config import ParallelConfig

# How long a rank waits in a collective for its peers: a dead or hung peer fails the group after this.
DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass
class ParallelMesh:
    config: ParallelConfig
    rank: int
    ulysses_rank: int
    ring_rank: int
    cfg_rank: int
    ulysses_group: object
    ring_group: object
    sequence_group: object
    cfg_group: object
    ring_peers: list[int]  # global ranks of my ring, in ring order

    @property
    def sequence_rank(self) -> int:
        return self.ring_rank * self.config.ulysses + self.ulysses_rank

    @classmethod
    def create(cls, config: ParallelConfig, num_heads: int, timeout: timedelta = DEFAULT_TIMEOUT) -> "ParallelMesh":
        """Build every subgroup on the initialised default group (all ranks must call this, in step)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: launch with torchrun or a Ray replica")
        config.validate(num_heads, dist.get_world_size())
        u, r, c = config.ulysses, config.ring, config.cfg
        rank = dist.get_rank()
        cfg_rank, ring_rank, ulysses_rank = rank // (r * u), (rank // u) % r, rank % u

        def build(rank_lists: list[list[int]]):
            mine = None
            for ranks in rank_lists:  # every rank creates every group, in the same order
                group = dist.new_group(ranks, timeout=timeout)
                if rank in ranks:
                    mine = group
            return mine

        ulysses = build([[k * r * u + i * u + j for j in range(u)] for k in range(c) for i in range(r)])
        ring_lists = [[k * r * u + i * u + j for i in range(r)] for k in range(c) for j in range(u)]
        ring = build(ring_lists)
        sequence = build([[k * r * u + s for s in range(r * u)] for k in range(c)])
        cfg = build([[k * r * u + s for k in range(c)] for s in range(r * u)])
        peers = next(ranks for ranks in ring_lists if rank in ranks)
        return cls(config, rank, ulysses_rank, ring_rank, cfg_rank, ulysses, ring, sequence, cfg, peers)
