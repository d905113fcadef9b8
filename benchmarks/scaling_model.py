"""Projected per-step DiT time of the full-size model on P devices, per layout and link, vs published xDiT figures.

A model, not a measurement, and an upper bound: single-device step time (measured with
`benchmarks/gpu_dit.py` and passed as `--step-seconds`, or FLOPs / (peak x MFU) when no GPU was available)
split over P ranks (the 226 text tokens' dense work is replicated on every rank, as our layout does), plus
the communication each rank must do per step (the USP volumes `benchmarks/comm_volume.py` measures our code at,
within 2%) over the link's bandwidth: Ulysses all-to-alls cannot overlap compute; ring K/V passes overlap
the attention share of compute; the prediction gathers are serial. Efficiency = T1 / (P x T_P). Not
modelled: per-device kernel efficiency falling at smaller per-rank shapes and collective latency, the
main reasons published figures sit lower; they need a GPU cluster to measure.

Full size: 42 layers, 48 heads x 64, 480x848, 49 frames (13 latent frames x 30 x 53 patches = 20,670 video
tokens + 226 text), CFG batch 2, bf16, 50 steps.

    python benchmarks/scaling_model.py                       # H100 bf16 peak 989 TFLOP/s at 40% MFU
    python benchmarks/scaling_model.py --step-seconds 3.1    # with a measured single-device step
    python benchmarks/scaling_model.py --smoke               # the same, P = 2 and 4 (CI)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parallel.costs import comm_bytes_per_forward  # noqa: E402

LAYERS, HEADS, HEAD_DIM = 42, 48, 64
VIDEO_TOKENS, TEXT_TOKENS, PATCH_OUT, BF16 = 13 * 30 * 53, 226, 2 * 2 * 16, 2
STEPS = 50
# GB/s each device can send. HCCS: Ascend 910B, 7 links x 28 GB/s (an assumption; set --hccs).
LINKS = {"NVLink": 450.0, "HCCS": 196.0, "PCIe": 25.0, "100GbE": 12.5}
PUBLISHED = ["L40, 5B, 720x480x49: 1 GPU 6.28 s/step; u2 r3 c2 (12 GPUs) 0.81 s: 7.75x, 65%",
             "L40, 5B: u2 or r2 (2 GPUs) 3.63 / 3.65 s: 1.73x, 86%",
             "A100, 5B: 1 GPU 4.07 s/step; u2 c2 (4 GPUs) 1.27 s: 3.2x, 80%",
             "ConsisID (CogVideoX identity model), H100 end to end: r3 c2 on 6 GPUs 3.21x, 54%"]


def step_flops() -> tuple[float, float]:
    """(total, attention) FLOPs of one denoising step: both CFG branches, every layer."""
    s, h = VIDEO_TOKENS + TEXT_TOKENS, HEADS * HEAD_DIM
    dense = 24 * s * h * h  # QKV + output projections (8 s h^2) and the 4x MLP (16 s h^2)
    attention = 4 * s * s * h  # QK^T and PV
    return 2 * LAYERS * (dense + attention), 2 * LAYERS * attention


def layouts(world: int) -> list[tuple[int, int, int]]:
    return [(c, u, world // (c * u)) for c in (1, 2) for u in range(1, world + 1)
            if world % (c * u) == 0 and HEADS % u == 0]


def projected_step(t1: float, attention_share: float, c: int, u: int, r: int, gbps: float) -> float:
    p = c * u * r
    terms = comm_bytes_per_forward(c, u, r, LAYERS, VIDEO_TOKENS, TEXT_TOKENS, PATCH_OUT, BF16, HEADS * HEAD_DIM)
    text_dense = (1 - attention_share) * TEXT_TOKENS / (VIDEO_TOKENS + TEXT_TOKENS)  # replicated, not split
    compute = t1 * ((1 - text_dense) / p + text_dense)
    seconds = {kind: volume / (gbps * 1e9) for kind, volume in terms.items()}
    ring_exposed = max(0.0, seconds["ring"] - attention_share * compute)
    return compute + seconds["ulysses"] + ring_exposed + seconds["gather"] + seconds["cfg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-seconds", type=float, help="measured single-device step (both CFG branches)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.40, help="model-FLOPs utilisation assumed without a measurement")
    parser.add_argument("--hccs", type=float, default=LINKS["HCCS"], help="HCCS GB/s per device")
    parser.add_argument("--smoke", action="store_true", help="P = 2 and 4 only")
    args = parser.parse_args()
    links = {**LINKS, "HCCS": args.hccs}
    total, attention = step_flops()
    t1 = args.step_seconds or total / (args.peak_tflops * 1e12 * args.mfu)
    source = "measured" if args.step_seconds else f"{total / 1e15:.2f} PFLOP / ({args.peak_tflops:.0f} TFLOP/s x {args.mfu:.0%})"
    print(f"full-size DiT, 480x848x49, CFG batch 2, bf16: T1 = {t1:.2f} s/step ({source}); "
          f"{STEPS} steps = {STEPS * t1 / 60:.1f} min; attention {attention / total:.0%} of FLOPs")
    header = " ".join(f"{name + ' s':>10} {'eff':>5}" for name in links)
    print(f"{'P':>2} {'c u r':>6}  {header}")
    best: dict[int, tuple[float, str]] = {}
    for world in ((2, 4) if args.smoke else range(2, 9)):
        for c, u, r in layouts(world):
            cells = []
            for name, gbps in links.items():
                step = projected_step(t1, attention / total, c, u, r, gbps)
                efficiency = t1 / (world * step)
                cells.append(f"{step:>10.3f} {efficiency:>5.0%}")
                if name == "NVLink" and efficiency > best.get(world, (0.0, ""))[0]:
                    best[world] = (efficiency, f"c{c} u{u} r{r}")
            print(f"{world:>2} {c} {u} {r}  {' '.join(cells)}")
    print("published (parallelism.md):")
    for line in PUBLISHED:
        print(f"  {line}")
    top = max(best)
    print(f"headline: projected NVLink efficiency bound at P = {top}: {best[top][0]:.0%} ({best[top][1]}); "
          f"published xDiT 54-86% (kernel efficiency at small shapes is the gap, unmodelled)")


if __name__ == "__main__":
    main()
