"""One command for a lent GPU: what the product does on it, measured in time-boxed sections.

Each section rewrites `OUT/gpu_check.json` when it ends (a run killed at its limit still returns what it
measured): environment and the SDPA kernel torch selects and the one we measure fastest; the bf16 matmul
peak and the DiT's own GEMM shapes; attention at the model's shape per kernel, our LSE kernels against
the math reference and the ring merge over 2 and 4 blocks; the released-config DiT in bf16 (random weights,
keys checked against the released list): one CFG forward and one denoising step at 480x848x49 (time,
TFLOP/s, share of the measured peak, peak memory, the attention kernel the profiler saw), against
diffusers' own CogVideoX forward at the same shape, and 97 frames; the VAE decode of 13 latent frames;
the tiny preset on CPU fp32, CUDA fp32 and CUDA bf16; TeaCache's computed and skipped step and the
50-step projection; `torch.compile` of the blocks last (its first call compiles).

    python benchmarks/gpu_check.py --out "$OUT"           # CUDA, full size, budget 420 s
    python benchmarks/gpu_check.py --smoke --out DIR      # CPU, tiny sizes: every section in seconds (CI)

Needs torch and diffusers only (no Ray): see benchmarks/RESULTS.md for the one-call device command.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_dit import build, dit_flops, matmul_peak, seconds_per_call, vae_decode_seconds  # noqa: E402

KEYS_TSV = ROOT / "tests" / "data" / "transformer-checkpoint-keys.tsv"
FULL = {"frames": 13, "long_frames": 25, "height": 60, "width": 106, "matmul": 8192, "attention_tokens": 20_896}
SMOKE = {"frames": 3, "long_frames": 5, "height": 8, "width": 12, "matmul": 256, "attention_tokens": 256}
TEACACHE_COMPUTED = 24  # of 50 steps: what ConsisID's published 0.15-threshold result implies (gpu-check.md)


class Report:
    """The JSON under OUT, rewritten whole (via a temp file) after every section."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.path, self.budget_s, self.started = out / "gpu_check.json", budget_s, time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"sections": {}}

    def run(self, name: str, section, context: dict, estimate_s: float) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed + estimate_s > self.budget_s:
            self.data["sections"][name] = {"status": f"skipped: {elapsed:.0f} s used, ~{estimate_s:.0f} s needed"}
        else:
            began = time.monotonic()
            try:
                result = {"status": "ok", **section(context)}
            except Exception as exc:  # one section's failure is its record, not the end of the run
                result = {"status": f"error: {type(exc).__name__}: {str(exc)[:300]}",
                          "trace": traceback.format_exc(limit=4)[-1500:]}
            result["seconds"] = round(time.monotonic() - began, 2)
            self.data["sections"][name] = result
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.data, indent=1, default=str))
        temp.replace(self.path)
        print(f"[{time.monotonic() - self.started:6.1f} s] {name}: {self.data['sections'][name]['status']}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def environment(ctx: dict) -> dict:
    from echovideo.attention_choice import candidates, chosen_backend, time_backend

    device, dtype = ctx["device"], ctx["dtype"]
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": ctx["device_name"]}
    if device.type != "cuda":
        return {**info, "sdpa_selected": None, "measured_choice": None}
    q = torch.randn(1, 48, 2048, 64, device=device, dtype=dtype)
    from torch.nn.attention import SDPBackend

    selected = SDPBackend(torch._fused_sdp_choice(q, q, q)).name
    capability = torch.cuda.get_device_capability(device)
    timings = {}
    for name in candidates(dtype, capability):
        try:
            timings[name] = round(1e3 * time_backend(name, device, dtype), 3)
        except RuntimeError as exc:
            timings[name] = f"unavailable: {str(exc).splitlines()[0][:120]}"
    return {**info, "capability": capability, "cudnn": torch.backends.cudnn.version(),
            "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
            "sdpa_selected": selected, "kernel_ms_4k_tokens": timings,
            "measured_choice": chosen_backend(device, dtype)}


def matmuls(ctx: dict) -> dict:
    """The measured peak, and the DiT's GEMMs at the 480x848x49 CFG batch (M = 2 x tokens)."""
    device, dtype, hidden = ctx["device"], ctx["dtype"], ctx["hidden"]
    peak = matmul_peak(device, dtype, ctx["sizes"]["matmul"])
    ctx["peak"] = peak
    m = 2 * ctx["tokens"]
    shapes = {"qkv": (hidden, 3 * hidden), "out": (hidden, hidden), "mlp_up": (hidden, 4 * hidden),
              "mlp_down": (4 * hidden, hidden)}
    result = {"peak_tflops": round(peak / 1e12, 1)}
    for name, (k, n) in shapes.items():
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        seconds = seconds_per_call(lambda: a @ b, device, 5)
        result[f"{name}_tflops"] = round(2 * m * k * n / seconds / 1e12, 1)
        result[f"{name}_share_of_peak"] = round(2 * m * k * n / seconds / peak, 3)
    return result


def attention(ctx: dict) -> dict:
    """Each kernel at the model's attention shape; our LSE kernels and the ring merge against one call."""
    from parallel.attention import merge_partial
    from parallel.kernels import KERNELS, math_reference

    device, dtype = ctx["device"], ctx["dtype"]
    n, result = ctx["sizes"]["attention_tokens"], {}
    if device.type == "cuda":
        from echovideo.attention_choice import _only

        q, k, v = (torch.randn(2, 48, n, 64, device=device, dtype=dtype) for _ in range(3))
        for name in ("cudnn", "flash", "efficient"):
            try:
                with _only(name):
                    seconds = seconds_per_call(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                               device, 3)
                result[f"{name}_tflops"] = round(2 * 4 * n * n * 48 * 64 / seconds / 1e12, 1)
            except RuntimeError as exc:
                result[f"{name}_tflops"] = f"unavailable: {str(exc).splitlines()[0][:120]}"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1024, 64, generator=g).to(device, dtype) for _ in range(3))
    reference, reference_lse = math_reference(q.float(), k.float(), v.float())
    for name, (kind, kernel) in KERNELS.items():
        if kind not in (device.type, "any") or name in ("flash-attn", "xfuser"):
            continue
        try:
            out, lse = kernel(q, k, v)
        except Exception as exc:  # a kernel this build lacks
            result[f"lse_{name}"] = f"unavailable: {type(exc).__name__}"
            continue
        result[f"lse_{name}"] = {"out_rel_error": _rel(out, reference), "lse_max_abs": _abs(lse, reference_lse)}
        for blocks in (2, 4):  # ring attention: K/V in blocks, merged by their LSE
            merged = None, None
            for kb, vb in zip(k.chunk(blocks, dim=2), v.chunk(blocks, dim=2)):
                merged = merge_partial(*merged, *kernel(q, kb, vb))
            result[f"ring{blocks}_{name}_rel_error"] = _rel(merged[0], out)
    return result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def released_keys(ctx: dict) -> dict:
    """The released config built on the meta device: every key and shape of the released checkpoint."""
    from echovideo.models import EchoVideoTransformer3DModel

    with torch.device("meta"):
        model = EchoVideoTransformer3DModel()
    ours = {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}
    released = dict(line.split("\t") for line in KEYS_TSV.read_text().splitlines() if "\t" in line)
    if ours != released:
        wrong = sorted(set(ours.items()) ^ set(released.items()))[:3]
        raise AssertionError(f"keys or shapes differ from the released list: {wrong}")
    return {"tensors": len(ours), "parameters": sum(p.numel() for p in model.parameters())}


def dit_inputs(model, frames: int, ctx: dict):
    c, device, dtype, sizes = model.config, ctx["device"], ctx["dtype"], ctx["sizes"]
    g = torch.Generator(device).manual_seed(1)
    latents = torch.randn(2, frames, c.in_channels, sizes["height"], sizes["width"], device=device, dtype=dtype,
                          generator=g)
    fused = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, device=device, dtype=dtype, generator=g)
    rotary = model.rotary_embedding(frames, sizes["height"], sizes["width"], device)
    return latents, torch.tensor([500, 500], device=device), fused, rotary


def dit(ctx: dict) -> dict:
    """One CFG forward and one denoising step at 480x848x49, the kernel the profiler saw, diffusers' forward."""
    from diffusers import CogVideoXDPMScheduler
    from reference_models import diffusers_dit

    device, sizes = ctx["device"], ctx["sizes"]
    reset_peak(device)
    model = ctx["model"] = build(ctx["smoke"], device, ctx["dtype"])
    latents, timestep, fused, rotary = ctx["inputs"] = dit_inputs(model, sizes["frames"], ctx)
    flops = dit_flops(model, ctx["tokens"], 2)
    with torch.no_grad():
        forward = seconds_per_call(lambda: model(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                   device, 2)
        peak = peak_gib(device)
        scheduler = CogVideoXDPMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
        scheduler.set_timesteps(50, device=device)

        def step():  # forward, the CFG combine in fp32, the scheduler's step on fp32 latents
            pred = model(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
            guided = pred[:1] + 6.0 * (pred[1:] - pred[:1])
            sample = latents[:1, :, :guided.shape[2]].float()  # the model's input also holds the face latents
            return scheduler.step(guided, None, scheduler.timesteps[1], scheduler.timesteps[2], sample,
                                  return_dict=False)

        step_s = seconds_per_call(step, device, 1)
        ours = model(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
        reference = diffusers_dit(model)
        theirs_s = seconds_per_call(lambda: reference(latents, fused, timestep, image_rotary_emb=rotary,
                                                      return_dict=False), device, 2)
        theirs = reference(latents, fused, timestep, image_rotary_emb=rotary, return_dict=False)[0].float()
        del reference
        kernels = profiled_attention_kernels(lambda: model(latents, timestep, fused_text=fused,
                                                           image_rotary_emb=rotary), device)
    peak_flops = ctx.get("peak") or matmul_peak(device, ctx["dtype"], sizes["matmul"])
    return {"forward_s": round(forward, 4), "tflops": round(flops / forward / 1e12, 1),
            "share_of_matmul_peak": round(flops / forward / peak_flops, 3), "step_s": round(step_s, 4),
            "peak_gib": peak, "diffusers_forward_s": round(theirs_s, 4), "ours_over_diffusers": round(forward / theirs_s, 3),
            "ours_vs_diffusers_rel_error": _rel(ours, theirs), "attention_kernels_seen": kernels}


def profiled_attention_kernels(call, device: torch.device) -> list[str]:
    """Names of the attention kernels a forward really ran (CUDA profiler; CPU ops off CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        call()
        sync(device)
    names = {event.key for event in prof.key_averages()}
    markers = ("flash", "fmha", "cudnn", "sdpa", "attention")
    return sorted(name[:120] for name in names if any(m in name.lower() for m in markers))[:12]


def long_clip(ctx: dict) -> dict:
    """97 frames (25 latent frames): one CFG forward."""
    device, model = ctx["device"], ctx["model"]
    reset_peak(device)
    latents, timestep, fused, rotary = dit_inputs(model, ctx["sizes"]["long_frames"], ctx)
    tokens = ctx["sizes"]["long_frames"] * (ctx["sizes"]["height"] // 2) * (ctx["sizes"]["width"] // 2) + 226
    with torch.no_grad():
        seconds = seconds_per_call(lambda: model(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                   device, 1)
    return {"forward_s": round(seconds, 4), "tflops": round(dit_flops(model, tokens, 2) / seconds / 1e12, 1),
            "peak_gib": peak_gib(device)}


def vae(ctx: dict) -> dict:
    device = ctx["device"]
    reset_peak(device)
    shape = (1, 16, ctx["sizes"]["frames"], ctx["sizes"]["height"], ctx["sizes"]["width"])
    return {"decode_s": round(vae_decode_seconds(ctx["smoke"], device, ctx["dtype"], shape), 3),
            "peak_gib": peak_gib(device)}


def teacache(ctx: dict) -> dict:
    """A computed and a skipped (cached residual) step's cost, and 50 steps with TEACACHE_COMPUTED computed."""
    from echovideo.speedups.step_cache import cached_steps

    model, device = ctx["model"], ctx["device"]
    latents, timestep, fused, rotary = ctx["inputs"]

    def one_step(cache, step: int):  # the step the hooks take it for: computed (0) or skipped (1)
        cache.step = step
        return model(latents, timestep, fused_text=fused, image_rotary_emb=rotary)

    with torch.no_grad(), cached_steps(model, [False, True]) as cache:
        computed = seconds_per_call(lambda: one_step(cache, 0), device, 1)
        skipped = seconds_per_call(lambda: one_step(cache, 1), device, 2)
    projected = TEACACHE_COMPUTED * computed + (50 - TEACACHE_COMPUTED) * skipped
    return {"computed_s": round(computed, 4), "skipped_s": round(skipped, 4), "fifty_steps_uncached_s":
            round(50 * computed, 2), "fifty_steps_cached_s": round(projected, 2),
            "speed_up": round(50 * computed / projected, 2)}


def tiny_devices(ctx: dict) -> dict:
    """The tiny preset's final latents and frames: CPU fp32 against CUDA fp32 (TF32 off) and CUDA bf16."""
    from echovideo.pipeline import EchoVideoPipeline
    from echovideo.presets.tiny import tiny_checkpoint
    from echovideo.sampling import GenerationOptions

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    photo = ROOT / "echovideo" / "assets" / "astronaut.jpg"
    opts = GenerationOptions(height=64, width=64, frames=9, steps=4, seed=3)
    runs = {}
    targets = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if ctx["device"].type == "cuda" else [])
    for device, dtype in targets:
        pipe = EchoVideoPipeline.from_pretrained(tiny_checkpoint(), device=device, dtype=dtype)
        runs[f"{device}-{dtype}"] = pipe("a person smiles", str(photo), opts, scores=False)
    cpu = runs["cpu-fp32"]
    return {name: {"latents_rel_error": _rel(r.latents, cpu.latents),
                   "frames_max_abs": int(abs(r.frames.astype(int) - cpu.frames.astype(int)).max())}
            for name, r in runs.items() if name != "cpu-fp32"}


def compiled(ctx: dict) -> dict:
    """`torch.compile` of the blocks: the first call (compiles) and the steady state, against eager."""
    model, device = ctx["model"], ctx["device"]
    latents, timestep, fused, rotary = ctx["inputs"]
    with torch.no_grad():
        eager_s = seconds_per_call(lambda: model(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                   device, 1)
        eager = model(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
        model.compile_blocks()
        sync(device)
        started = time.perf_counter()
        first = model(latents, timestep, fused_text=fused, image_rotary_emb=rotary).float()
        sync(device)
        first_s = time.perf_counter() - started
        steady = seconds_per_call(lambda: model(latents, timestep, fused_text=fused, image_rotary_emb=rotary),
                                  device, 2)
    return {"first_call_s": round(first_s, 2), "steady_s": round(steady, 4), "over_eager": round(steady / eager_s, 3),
            "rel_error": _rel(first, eager)}


SECTIONS = [  # name, function, ~seconds it needs on one H100 (skipped when the budget has no room left)
    ("environment", environment, 10), ("matmuls", matmuls, 15), ("attention", attention, 20),
    ("released_keys", released_keys, 5), ("dit_480x848x49", dit, 90), ("dit_480x848x97", long_clip, 30),
    ("vae_decode", vae, 40), ("teacache", teacache, 10), ("tiny_cpu_vs_cuda", tiny_devices, 40),
    ("compile", compiled, 150),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"), help="folder for gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, fp32")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; sections that would overrun are skipped")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA device (or --smoke on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    sizes = SMOKE if args.smoke else FULL
    hidden = 48 * 64 if not args.smoke else 64
    ctx = {"device": device, "dtype": torch.float32 if args.smoke else torch.bfloat16, "smoke": args.smoke,
           "sizes": sizes, "hidden": hidden, "tokens": sizes["frames"] * (sizes["height"] // 2) * (sizes["width"] // 2)
           + 226, "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"}
    report = Report(Path(args.out), args.budget)
    report.data.update(device=ctx["device_name"], date=time.strftime("%Y-%m-%d"), smoke=args.smoke)
    for name, section, estimate in SECTIONS:
        report.run(name, section, ctx, 0.0 if args.smoke else estimate)
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
