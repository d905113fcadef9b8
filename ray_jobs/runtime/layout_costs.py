"""`echovideo plan JOB --nodes 4x8:H100`: what each layout of the job would cost on a described cluster, with
no cluster needed, and the refusal of a job layout that cannot fit, before any placement.

The numbers come from `parallel.costs` (the released model's work sizes and the versioned device table).
A replica is placed whole on one node (STRICT_PACK), so a layout of more ranks than a node has GPUs cannot
run however many nodes there are: the table says so instead of leaving it out.
"""

import re
from dataclasses import dataclass

from echovideo.devices import DTYPE_BYTES, dtype_name
from echovideo.errors import EchoVideoInputError
from parallel.config import ParallelConfig
from parallel.costs import (
    Clip,
    Cost,
    fixed_clip_seconds,
    layout_cost,
    layouts,
    load_devices,
)
from ray_jobs.data.job import JobSpec

NODES = re.compile(r"(\d+)x(\d+):([A-Za-z0-9]+)")


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    device: str

    def describe(self) -> str:
        return f"{self.nodes} node(s) x {self.gpus_per_node} {self.device}"


def parse_nodes(text: str) -> Cluster:
    """`4x8:H100` -> 4 nodes of 8 H100s; the device must be in the table."""
    match = NODES.fullmatch(text.strip())
    devices = load_devices()["devices"]
    if not match:
        raise EchoVideoInputError("--nodes", f"{text!r} is not NODESxGPUS:DEVICE", "write e.g. --nodes 4x8:H100")
    nodes, gpus, device = int(match[1]), int(match[2]), match[3].upper()
    if device not in devices:
        raise EchoVideoInputError("--nodes", f"device {match[3]!r} is not in the device table",
                                  f"use one of {sorted(devices)}")
    if nodes < 1 or gpus < 1:
        raise EchoVideoInputError("--nodes", f"{text!r} has no GPUs", "write e.g. --nodes 1x8:H100")
    return Cluster(nodes, gpus, device)


def clip_of(spec: JobSpec) -> Clip:
    g = spec.generation
    return Clip(g["height"], g["width"], g["frames"], g["steps"], cfg=g["guidance"] > 1)


def job_layout(spec: JobSpec) -> ParallelConfig:
    p = spec.parallel
    return ParallelConfig(ulysses=p["ulysses"], ring=p["ring"], cfg=p["cfg"])


def weight_bytes(spec: JobSpec) -> int:
    return DTYPE_BYTES[dtype_name(spec.model["dtype"], "cuda")]


def costs(spec: JobSpec, cluster: Cluster) -> list[Cost]:
    """Every layout of 1 to all of the cluster's GPUs (ranks a power of two or a divisor of a node), the
    job's own first; a layout larger than a node is marked as not placeable."""
    device, clip = load_devices()["devices"][cluster.device], clip_of(spec)
    sizes = sorted({n for n in range(1, cluster.gpus_per_node + 1) if cluster.gpus_per_node % n == 0} |
                   {2**k for k in range(1, 8) if 2**k <= cluster.nodes * cluster.gpus_per_node})
    candidates = [job_layout(spec)] + [lay for n in sizes for lay in layouts(n, clip.cfg) if lay != job_layout(spec)]
    result = []
    for layout in candidates:
        cost = layout_cost(clip, layout, device, weight_bytes(spec))
        if cost.fits and layout.world > cluster.gpus_per_node:
            cost.problem = (f"a replica is placed on one node: {layout.world} ranks > {cluster.gpus_per_node} "
                            "GPUs per node")
        result.append(cost)
    return result


def describe(spec: JobSpec, cluster: Cluster) -> tuple[str, bool]:
    """The plan as text, and whether the job's own layout fits."""
    table = load_devices()
    device, clip = table["devices"][cluster.device], clip_of(spec)
    rows = costs(spec, cluster)
    lines = [f"clip {clip.describe()}: {clip.video_tokens:,} video + 226 text tokens; cluster {cluster.describe()} "
             f"({device['name']}, device table v{table['version']} of {table['date']}: "
             f"matmul {device['matmul_tflops']:g} TFLOP/s x {device['dense_efficiency']:g}, attention "
             f"{device['attention_tflops']:g} TFLOP/s, link {device['link_gbps']:g} GB/s)",
             f"{'layout':<12} {'ranks':>5} {'tokens/rank':>11} {'weights':>7} {'T5':>5} {'activ.':>6} {'VAE':>5} "
             f"{'peak GiB':>8} {'step s':>7} {'clip s':>7} {'replicas':>8} {'clips/h':>8}  fits"]
    for index, cost in enumerate(rows):
        m, marker = cost.memory_gib, "*" if index == 0 else " "
        if not m:  # cannot run at all: no numbers to show
            lines.append(f"{marker}{cost.layout.describe():<11} {cost.layout.world:>5} {'-':>11}  no: {cost.problem}")
            continue
        replicas = cluster.nodes * (cluster.gpus_per_node // cost.layout.world)
        rate = replicas * 3600 / cost.clip_s if cost.fits else 0.0
        lines.append(f"{marker}{cost.layout.describe():<11} {cost.layout.world:>5} {cost.tokens_per_rank:>11,} "
                     f"{m['weights']:>7.1f} {m['t5']:>5.1f} {m['activations']:>6.1f} {m['vae']:>5.1f} "
                     f"{m['peak']:>8.1f} {cost.step_s:>7.2f} {cost.clip_s:>7.0f} {replicas:>8} {rate:>8.1f}  "
                     f"{'yes' if cost.fits else 'no: ' + cost.problem}")
    lines.append("* the job's layout. Peak = the largest of encode (rank 0: DiT + T5), denoise (DiT + activations) and "
                 "decode (DiT + a VAE tile + the clip), with 1.5 GiB kept for the CUDA context; times are the model's "
                 "(parallel/costs.py), to be checked against a measured run. Clip s = steps x step + decode + "
                 f"fixed per-clip work on rank 0 ({fixed_terms(clip, device)})")
    return "\n".join(lines), rows[0].fits


def fixed_terms(clip: Clip, device: dict) -> str:
    """The fixed per-clip terms, named, with their seconds for this clip."""
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in fixed_clip_seconds(clip, device).items())


def refuse_unfit(spec: JobSpec, device_name: str, gpus_per_node: int) -> None:
    """Stop a job whose layout cannot fit on the cluster's GPUs, naming the number that does not fit."""
    if device_name.upper() not in load_devices()["devices"]:
        return  # a device the table does not know: nothing to say in advance
    job = costs(spec, Cluster(1, gpus_per_node, device_name.upper()))[0]
    if not job.fits:
        raise EchoVideoInputError("parallel", f"layout {job.layout.describe()} does not fit: {job.problem}",
                                  "use more ranks per replica (ulysses/ring/cfg), fewer frames or a smaller size; "
                                  "`echovideo plan JOB --nodes ...` compares the layouts")
