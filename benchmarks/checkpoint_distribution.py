"""Checkpoint distribution at real size: the full transformer (11.2 GB, `full_size.py`'s folder) served by a real
SeaweedFS on 127.0.0.1 as an `s3://` checkpoint, fetched by the product's per-node fetch onto a local Ray cluster
of two nodes (each with its own node-local cache, as two machines would have), then loaded by two replicas'
ranks per node as a job's ranks load it.

Measured: bytes each node downloaded (goal: exactly one copy per node, shared by its replicas and by reruns),
the fetch's time, each rank's time from the fetch's end to its weights loaded (`loaded_weights` then
`from_pretrained`), a rerun's bytes (goal: none), and a download SIGKILLed half way: what its rerun leaves on
disk (goal: one copy, no staging folder). A clip at this size is not rendered: on these 2 cores one denoising
step at 480x848x49 would take hours (full_size.py measures the forward).

    python benchmarks/full_size.py --skip-forward          # the weights, once
    python benchmarks/checkpoint_distribution.py           # ~44 GB of disk while it runs; deleted after
    python benchmarks/checkpoint_distribution.py --smoke   # the tiny preset's checkpoint: checks the script
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow.fs as pfs
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import object_store as server  # noqa: E402  (the tests' real SeaweedFS)
import own_processes  # noqa: E402

from echovideo.checkpoint_cache import DOWNLOADS_LOG, PARTIAL  # noqa: E402
from echovideo.locations import default_cache_dir  # noqa: E402
from ray_jobs.data.job import parse_job  # noqa: E402
from ray_jobs.store.checkpoints import fetch_checkpoint  # noqa: E402

GIB = 2**30
REPLICAS_PER_NODE = 2
STALL = textwrap.dedent("""
    import sys, time
    from echovideo.checkpoint_cache import local_checkpoint

    def stall(done, total):  # killed here, with the first file(s) in its staging folder
        if done >= total / 3:
            print("stalled", flush=True)
            time.sleep(3600)

    local_checkpoint(sys.argv[1], stall)
""")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def downloaded(cache: Path) -> list[int]:
    """Bytes of each download this node's cache logged."""
    log = cache / "checkpoints" / DOWNLOADS_LOG
    return [int(line.split(" bytes ")[0].rsplit(" ", 1)[1]) for line in log.read_text().splitlines()] \
        if log.exists() else []


@ray.remote(num_cpus=0)
def load_as_a_rank(uri: str) -> dict:
    """What a rank does on a node once the fetch ended: find the node's copy, then load the weights from it."""
    import time

    import torch

    from echovideo.checkpoint_cache import loaded_weights
    from echovideo.models import EchoVideoTransformer3DModel

    started = time.perf_counter()
    folder, _ = loaded_weights(uri)
    found = time.perf_counter() - started
    EchoVideoTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16)
    return {"find_s": round(found, 2), "load_s": round(time.perf_counter() - started - found, 2),
            "cache": os.environ["ECHOVIDEO_CACHE"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_cache_dir() / "full-size-transformer")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        from echovideo.presets.tiny import tiny_checkpoint

        weights = tiny_checkpoint() / "transformer"
    else:
        weights = args.weights
        if not (weights / "config.json").is_file():
            sys.exit(f"no weights in {weights}: run `python benchmarks/full_size.py --skip-forward` first")
    size = folder_bytes(weights)
    work = Path(tempfile.mkdtemp(prefix="echovideo-distribution-"))
    store = server.start(work / "seaweedfs")
    caches = [work / f"node-{i}-cache" for i in range(2)]
    cluster = None
    try:
        started = time.perf_counter()
        pfs.copy_files(str(weights), "echovideo/ckpt/transformer", source_filesystem=pfs.LocalFileSystem(),
                       destination_filesystem=store.filesystem())
        print(f"checkpoint: {size / GIB:.2f} GiB ({len(list(weights.iterdir()))} files), uploaded to SeaweedFS in "
              f"{time.perf_counter() - started:.0f} s")
        uri = store.uri("ckpt")  # its credentials ride in the URI, as users may write them
        cluster = Cluster()
        for cache in caches:
            cluster.add_node(num_cpus=REPLICAS_PER_NODE, env_vars={"ECHOVIDEO_CACHE": str(cache)})
        ray.init(address=cluster.address, include_dashboard=False)
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        spec = parse_job({"model": {"checkpoint": uri}, "dataset": {"prompts": "unused.jsonl"},
                          "job": {"output": str(work / "out")}}, "benchmark")
        started = time.perf_counter()
        fetch_checkpoint(spec, nodes, progress=False)
        fetched = time.perf_counter() - started
        per_node = [downloaded(cache) for cache in caches]
        print(f"fetch onto {len(nodes)} nodes: {fetched:.0f} s; bytes per node {per_node} "
              f"({[round(sum(b) / size, 3) for b in per_node]} copies)")
        pinned = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
        ranks = [load_as_a_rank.options(scheduling_strategy=on).remote(uri) for on in pinned
                 for _ in range(REPLICAS_PER_NODE)]
        loads = ray.get(ranks)
        print(f"{len(loads)} ranks ({REPLICAS_PER_NODE} replicas x 1 rank per node) found and loaded the node's copy: "
              f"{json.dumps(loads)}; downloads now {[downloaded(c) for c in caches]}")
        started = time.perf_counter()
        fetch_checkpoint(spec, nodes, progress=False)
        print(f"rerun's fetch: {time.perf_counter() - started:.1f} s, downloads now "
              f"{[len(downloaded(c)) for c in caches]} (one per node: nothing fetched again)")
        copies = killed_download(uri, caches[0], size)
        print(f"headline: copies fetched per node {[round(sum(downloaded(c)) / size, 3) for c in caches[1:]]} "
              f"(node 0 fetched again after its copy was removed); after a killed download {copies:.3f} copies")
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
        server.stop(store)
        shutil.rmtree(work, ignore_errors=True)


def killed_download(uri: str, cache: Path, size: int) -> float:
    """A new copy (the old one removed, as after a disk cleaner) SIGKILLed a third of the way, then fetched again."""
    entries = [p for p in (cache / "checkpoints").iterdir() if p.is_dir() and PARTIAL not in p.name]
    for entry in entries:
        shutil.rmtree(entry)
    env = {**os.environ, "ECHOVIDEO_CACHE": str(cache)}
    own_processes.killed_at([sys.executable, "-c", STALL, uri], "stalled", env)
    left = folder_bytes(cache / "checkpoints")
    rerun = subprocess.run([sys.executable, "-c", "import sys; from echovideo.checkpoint_cache import "
                            "local_checkpoint; local_checkpoint(sys.argv[1])", uri], env=env, check=True)
    assert rerun.returncode == 0
    partials = [p.name for p in (cache / "checkpoints").iterdir() if PARTIAL in p.name]
    copies = folder_bytes(cache / "checkpoints") / size
    print(f"killed download: {left / GIB:.2f} GiB left by the kill; after the rerun the cache holds {copies:.3f} "
          f"copies, staging folders {partials} (restarted, not resumed: the half copy is removed before the new "
          "download)")
    return copies


if __name__ == "__main__":
    main()
