"""Bytes each rank sends per DiT forward, per layout, against the USP theoretical volume; peak memory vs P.

Runs real gloo process groups on CPU with a DiT of the EchoVideo architecture (tiny widths, the
released 480x848 token grid by default) and the instrumented collectives of `parallel.comm`.
Theory per layer and batch item (b bytes/element, S the joint text+video sequence, h the hidden size,
P = u*r):
Ulysses 4*S*h*b/P*(u-1)/u, ring 2*(S/r)*(h/u)*b*(r-1); plus, once per forward, the minimal gathers of
the prediction over the sequence ranks and over the CFG pair. Prints a table, then the headline ratio.

    python benchmarks/comm_volume.py                 # P = 2..8, every layout the 12 heads allow
    python benchmarks/comm_volume.py --smoke         # seconds: a small grid, P = 2 and 4
"""

import argparse
import os
import resource
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parallel.costs import comm_bytes_per_forward  # noqa: E402

HEADS, HEAD_DIM = 12, 16


def layouts_for(world: int) -> list[tuple[int, int, int]]:
    """Every (cfg, ulysses, ring) with u | heads and c*u*r == world."""
    return [(c, u, world // (c * u)) for c in (1, 2) for u in range(1, world + 1)
            if world % (c * u) == 0 and HEADS % u == 0]


def theory_bytes(*args, **kwargs) -> float:
    return sum(comm_bytes_per_forward(*args, **kwargs, hidden=HEADS * HEAD_DIM).values())


def build_model(layers: int):
    from echovideo.models import EchoVideoTransformer3DModel
    from echovideo.presets.tiny import TRANSFORMER_CONFIG

    torch.manual_seed(0)
    return EchoVideoTransformer3DModel(**{**TRANSFORMER_CONFIG, "num_layers": layers}).eval()


def inputs(model, frames, height, width):
    c = model.config
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, frames, c.in_channels, height, width, generator=g)
    text = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, generator=g)
    with torch.no_grad():
        fused = model.fuse_identity_text(text, torch.randn(2, c.face_features_embed_dim, generator=g),
                                         torch.randn(2, c.face_seq_length, c.face_embed_dim, generator=g))
    return latents, torch.tensor([999, 999]), fused, model.rotary_embedding(frames, height, width)


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rank_main(rank, world, init, layouts, args, queue):
    from parallel import ParallelConfig, ParallelMesh, SequenceParallelDiT
    from parallel.comm import BYTES_SENT

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(minutes=5))
    model = build_model(args.layers)
    latents, t, fused, rotary = inputs(model, args.frames, args.height, args.width)
    for c, u, r in layouts:
        mesh = ParallelMesh.create(ParallelConfig(ulysses=u, ring=r, cfg=c), HEADS)
        engine = SequenceParallelDiT(model, mesh)
        BYTES_SENT.clear()
        before = current_rss()
        engine(latents, t, fused, rotary)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        queue.put((rank, (c, u, r), dict(BYTES_SENT), peak))
    dist.destroy_process_group()


def measure(world, layouts, args) -> list:
    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        procs = [context.Process(target=rank_main, args=(rank, world, f"file://{folder}/s", layouts, args, queue))
                 for rank in range(world)]
        for proc in procs:
            proc.start()
        results = [queue.get() for _ in range(world * len(layouts))]
        for proc in procs:
            proc.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small grid, P = 2 and 4 (CI-sized)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3, help="latent frames (13 for 49 video frames)")
    parser.add_argument("--height", type=int, default=60, help="latent rows (480 px / 8)")
    parser.add_argument("--width", type=int, default=106, help="latent columns (848 px / 8)")
    args = parser.parse_args()
    worlds = range(2, 9)
    if args.smoke:
        args.layers, args.height, args.width, worlds = 2, 10, 14, (2, 4)
    model = build_model(1)
    video_tokens = args.frames * (args.height // 2) * (args.width // 2)
    patch_out = model.config.out_channels * model.config.patch_size ** 2
    text_tokens = model.config.max_text_seq_length
    print(f"DiT {args.layers} layers, {HEADS}x{HEAD_DIM} heads, fp32; {video_tokens} video + {text_tokens} text tokens")
    print(f"{'P':>2} {'c u r':>7} {'sent/rank (MB)':>15} {'theory (MB)':>12} {'ratio':>6} {'peak RSS/rank (MB)':>19}"
          f"  by kind (MB)")
    worst = 0.0
    for world in worlds:
        rows = measure(world, layouts_for(world), args)
        for layout in layouts_for(world):
            mine = [row for row in rows if row[1] == layout]
            sent = max(sum(row[2].values()) for row in mine)
            kinds = {k: max(row[2].get(k, 0) for row in mine) / 1e6 for k in sorted({k for row in mine for k in row[2]})}
            theory = theory_bytes(*layout, args.layers, video_tokens, text_tokens, patch_out)
            ratio = sent / theory
            worst = max(worst, ratio)
            peak = max(row[3] for row in mine) / 1e6
            print(f"{world:>2} {' '.join(map(str, layout)):>7} {sent / 1e6:>15.2f} {theory / 1e6:>12.2f} {ratio:>6.3f}"
                  f" {peak:>19.1f}  " + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items()))
    print(f"headline: worst bytes-sent / USP-theory ratio over all layouts = {worst:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
