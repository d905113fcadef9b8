"""Full-size DiT on one GPU: forward time, model-FLOPs utilisation, ours vs diffusers, peak memory, VAE decode.

Random weights in bf16 at the released size (42 layers, 48 x 64 heads, 5.6 B parameters with IITF), one
CFG step's forward (batch 2) at 480x848x49 (20,670 video + 226 text tokens). MFU is against the device's
measured bf16 matmul peak (8192^3 GEMMs), not the datasheet. The same DiT weights in diffusers'
CogVideoXTransformer3DModel give the reference time (ours / diffusers) and a bf16 agreement check. The
CogVideoX VAE (released config, random weights) decodes the 13 latent frames with diffusers' tiling.
The speed options are timed too, each against eager: fused QKV projections, `torch.compile`d blocks.
Runs in a few minutes on one H100 (within the device tool's 10-minute limit).

    python benchmarks/gpu_dit.py            # CUDA, full size
    python benchmarks/gpu_dit.py --smoke    # CPU, tiny widths, fp32: checks the script in seconds
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_models import diffusers_dit  # noqa: E402

from echovideo.models import EchoVideoTransformer3DModel  # noqa: E402

FULL = {"frames": 13, "height": 60, "width": 106, "vae_latent": (1, 16, 13, 60, 106)}
SMOKE = {"frames": 3, "height": 8, "width": 12, "vae_latent": (1, 16, 3, 8, 12)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernels chosen, memory pools grown
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a large square GEMM: the ceiling MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / seconds_per_call(lambda: a @ b, device, 10)


def dit_flops(model: EchoVideoTransformer3DModel, tokens: int, batch: int) -> float:
    """Dense (QKV, output, 4x MLP) and attention FLOPs of the transformer blocks."""
    c = model.config
    h = c.num_attention_heads * c.attention_head_dim
    return batch * c.num_layers * (24 * tokens * h * h + 4 * tokens * tokens * h)


def build(smoke: bool, device: torch.device, dtype: torch.dtype) -> EchoVideoTransformer3DModel:
    torch.manual_seed(0)
    if smoke:
        from echovideo.presets.tiny import TRANSFORMER_CONFIG

        return EchoVideoTransformer3DModel(**TRANSFORMER_CONFIG).to(device, dtype).eval()
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in bf16 directly: 11 GB instead of 22 GB in fp32 first
        try:
            return EchoVideoTransformer3DModel().eval()
        finally:
            torch.set_default_dtype(previous)


def vae_decode_seconds(smoke: bool, device: torch.device, dtype: torch.dtype, latent_shape) -> float:
    from diffusers import AutoencoderKLCogVideoX

    from echovideo.loading import decode_in_fp16_under_bf16, decoder_dtype
    from echovideo.models.cpu_conv3d import use_onednn_conv3d
    from echovideo.presets.tiny import VAE_CONFIG

    vae = AutoencoderKLCogVideoX(**(VAE_CONFIG if smoke else {})).to(device, dtype).eval()
    vae.enable_tiling()
    use_onednn_conv3d(decode_in_fp16_under_bf16(vae))  # as the pipeline loads it
    latents = torch.randn(latent_shape, device=device, dtype=decoder_dtype(vae))
    with torch.no_grad():
        return seconds_per_call(lambda: vae.decode(latents), device, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny widths, fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_dit.py needs a CUDA device (or --smoke on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    shape = SMOKE if args.smoke else FULL
    peak = matmul_peak(device, dtype, 512 if args.smoke else 8192)

    ours = build(args.smoke, device, dtype)
    c = ours.config
    generator = torch.Generator(device).manual_seed(1)
    latents = torch.randn(2, shape["frames"], c.in_channels, shape["height"], shape["width"], device=device,
                          dtype=dtype, generator=generator)
    fused = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, device=device, dtype=dtype, generator=generator)
    timestep = torch.tensor([500, 500], device=device)
    rotary = ours.rotary_embedding(shape["frames"], shape["height"], shape["width"], device)
    tokens = shape["frames"] * (shape["height"] // c.patch_size) * (shape["width"] // c.patch_size) \
        + c.max_text_seq_length
    flops = dit_flops(ours, tokens, 2)

    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ours_s = seconds_per_call(lambda: ours(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                  device, args.repeats)
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        mine = ours(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
        reference = diffusers_dit(ours)
        theirs_s = seconds_per_call(lambda: reference(latents, fused, timestep, image_rotary_emb=rotary,
                                                      return_dict=False), device, args.repeats)
        theirs = reference(latents, fused, timestep, image_rotary_emb=rotary, return_dict=False)[0].float()
        agreement = ((mine - theirs).norm() / theirs.norm()).item()
        variants = {}  # the speed options, applied in place one after the other: seconds, rel. error vs eager
        for label, apply, undo in (("fused QKV", ours.fuse_qkv_projections, ours.unfuse_qkv_projections),
                                   ("compiled blocks", ours.compile_blocks, None)):
            apply()
            seconds = seconds_per_call(lambda: ours(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                       device, args.repeats)
            out = ours(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
            variants[label] = (seconds, ((out - mine).norm() / mine.norm()).item())
            if undo is not None:
                undo()
    decode_s = vae_decode_seconds(args.smoke, device, dtype, shape["vae_latent"])

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    print(f"{name}, {dtype}, {c.num_layers} layers x {c.num_attention_heads} heads, {tokens} tokens, batch 2 (CFG)")
    print(f"measured matmul peak          {peak / 1e12:10.1f} TFLOP/s")
    print(f"ours: forward                 {ours_s:10.3f} s   MFU {flops / ours_s / peak:6.1%}")
    print(f"diffusers CogVideoX: forward  {theirs_s:10.3f} s   MFU {flops / theirs_s / peak:6.1%}")
    print(f"ours vs diffusers output      rel. error {agreement:.2e}")
    for label, (seconds, error) in variants.items():
        print(f"ours, {label + ':':<23} {seconds:10.3f} s   x{seconds / ours_s:.2f} of eager, rel. error {error:.1e}")
    print(f"peak memory (ours, forward)   {peak_gb:10.1f} GiB")
    print(f"VAE decode, 13 latent frames  {decode_s:10.2f} s" if not args.smoke else
          f"VAE decode (tiny)             {decode_s:10.2f} s")
    print(f"headline: ours / diffusers DiT forward = {ours_s / theirs_s:.2f}; MFU {flops / ours_s / peak:.1%}")


if __name__ == "__main__":
    main()
