"""Collectives of the sequence-parallel forward, instrumented: bytes sent per rank by kind.

The counters let benchmarks compare the traffic with the USP theoretical volume; counting costs a
dict update per call and never synchronises. Every collective runs inside `collective(...)`, so a
failure of the group itself (and only that) surfaces as ParallelGroupError.
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from echovideo.errors import ParallelGroupError

BYTES_SENT: Counter = Counter()


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Report a failed collective as the group failing; anything raised outside one keeps its own type.

    gloo, NCCL and HCCL raise RuntimeError (or torch's DistError) when a peer died, hung past the group
    timeout or closed its connection. Out-of-memory inside a collective stays an out-of-memory error.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        raise ParallelGroupError(
            f"{what} failed: {exc}. A peer rank died or stopped answering (its own log names the cause); "
            "the group cannot continue and must be restarted") from exc


def _count(kind: str, tensor: torch.Tensor, fraction: float = 1.0) -> None:
    BYTES_SENT[kind] += int(tensor.numel() * tensor.element_size() * fraction)


def heads_to_sequence(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Ulysses all-to-all: (B, H, S_local, d) all heads -> (B, H/u, u*S_local, d) my heads, all tokens."""
    if size == 1:
        return x
    b, h, s, d = x.shape
    send = x.reshape(b, size, h // size, s, d).transpose(0, 1).contiguous()  # chunk j -> rank j
    recv = torch.empty_like(send)
    _count("ulysses", send, (size - 1) / size)
    with collective("Ulysses all-to-all"):
        dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * s, d)


def sequence_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Inverse all-to-all: (B, H/u, u*S_local, d) -> (B, H, S_local, d)."""
    if size == 1:
        return x
    b, hl, s_all, d = x.shape
    send = x.reshape(b, hl, size, s_all // size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    _count("ulysses", send, (size - 1) / size)
    with collective("Ulysses all-to-all"):
        dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, size * hl, s_all // size, d)


def all_gather_cat(x: torch.Tensor, group, size: int, dim: int, kind: str) -> torch.Tensor:
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    _count(kind, x, size - 1)
    with collective(f"{kind} all-gather"):
        dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class RingExchange:
    """Pass a K/V block to the next rank of the ring while receiving the previous rank's block."""

    def __init__(self, peers: list[int], my_rank: int) -> None:
        index = peers.index(my_rank)
        self.next, self.prev = peers[(index + 1) % len(peers)], peers[(index - 1) % len(peers)]

    def start(self, block: torch.Tensor) -> tuple[list, torch.Tensor]:
        incoming = torch.empty_like(block)
        _count("ring", block)
        ops = [dist.P2POp(dist.isend, block, self.next), dist.P2POp(dist.irecv, incoming, self.prev)]
        with collective("ring K/V exchange"):
            return dist.batch_isend_irecv(ops), incoming

    @staticmethod
    def finish(requests: list) -> None:
        with collective("ring K/V exchange"):
            for request in requests:
                request.wait()
