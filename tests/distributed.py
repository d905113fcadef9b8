"""Run a function on N real processes joined in a gloo group (torch.multiprocessing, file store).

Ranks start from a fork server that imported torch, diffusers, transformers and our packages once per test
session: a fresh spawned rank re-imports them all (about 4 CPU-seconds each, most of a parallel test's cost on
2 cores). A forked rank is still a process of its own with its own group, as a spawned one is. The server
only imports: it runs no torch op and opens no group. The only threads it holds are the idle pools that
OpenBLAS (numpy, scipy) and OpenCV start when loaded, which both reset in a forked child (pthread_atfork),
as every forking DataLoader worker relies on. It exits with the test process."""

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# What every rank imports: loaded once in the fork server, inherited by every rank it forks.
PRELOAD = ["torch", "torch.distributed", "echovideo.pipeline", "parallel.pipeline", "parallel.vae", "distributed"]
CONTEXT = mp.get_context("forkserver")
CONTEXT.set_forkserver_preload(PRELOAD)


def _entry(rank: int, world: int, init: str, fn, args, timeout_s: float = 120) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn, *args) -> None:
    """Raises (with the rank's traceback) if any rank raises."""
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_entry, args=(world, f"file://{folder}/store", fn, args), nprocs=world, join=True,
                           start_method=CONTEXT.get_start_method())


def _report(rank: int, world: int, init: str, fn, args, timeout_s: float, folder: str) -> None:
    """Record what `fn` raised (type, message), or None, in rank.json; a rank that dies writes nothing."""
    try:
        _entry(rank, world, init, fn, args, timeout_s)
        outcome = None
    except Exception as exc:  # the test inspects it
        outcome = [type(exc).__name__, str(exc)]
    Path(folder, f"{rank}.json").write_text(json.dumps(outcome))


def run_ranks_outcomes(world: int, fn, *args, timeout_s: float, wall_s: float) -> dict[int, object]:
    """Each rank's outcome: None (returned), [type, message] (raised) or "died"; ranks are killed after wall_s."""
    with tempfile.TemporaryDirectory() as folder:
        procs = [CONTEXT.Process(target=_report, args=(rank, world, f"file://{folder}/store", fn, args, timeout_s,
                                                       folder)) for rank in range(world)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(wall_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
        files = {rank: Path(folder, f"{rank}.json") for rank in range(world)}
        return {rank: json.loads(f.read_text()) if f.exists() else "died" for rank, f in files.items()}
