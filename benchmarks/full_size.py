"""Real size without a GPU: the full released transformer (5,621,259,202 parameters, random bf16 weights in the
released layout) loaded by the product's loader, measured, and run once through all 42 blocks on the CPU.

1. Weights: every tensor of `EchoVideoTransformer3DModel()` (the released config; 1081 keys) as random bf16,
   in two safetensors shards + index + config.json, as released. Written once into a cache folder and reused.
2. Load, in a fresh process, as a job's rank loads it (`EchoVideoTransformer3DModel.from_pretrained`,
   bf16), the shards evicted from the page cache first (a cold load): seconds, peak resident memory against
   the weights' size, bytes read from disk, and whether the parameters live in the shard files' mappings
   (mmapped) or in anonymous memory (copied).
3. One forward of all 42 blocks at 1 latent frame of 480x848 (1,590 video + 226 text tokens, batch 1) in
   bf16, and the same forward in fp32 block by block (each block cast just before it runs: 22 GB of fp32
   weights do not fit beside the bf16 ones): seconds, FLOP/s against this CPU's measured matmul rate in the
   same dtype, bf16 against fp32, and the activation peak against `parallel.costs`' formula.

    python benchmarks/full_size.py                       # writes ~11.2 GB once, then measures (tens of minutes)
    python benchmarks/full_size.py --skip-forward        # weights and load only
    python benchmarks/full_size.py --delete              # remove the cached weights
    python benchmarks/full_size.py --smoke               # 2 layers, narrow: checks the script in seconds
"""

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from echovideo.locations import default_cache_dir  # noqa: E402
from echovideo.models import EchoVideoTransformer3DModel  # noqa: E402
from echovideo.models.checkpoint import INDEX_NAME  # noqa: E402
from echovideo.presets.tiny import TRANSFORMER_CONFIG as SMOKE_CONFIG  # noqa: E402
from parallel import costs  # noqa: E402

SHARD = "diffusion_pytorch_model-{:05d}-of-00002.safetensors"
RELEASED_PARAMS, RELEASED_KEYS = 5_621_259_202, 1081
GIB = 2**30


def released_shapes(config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of every tensor the model holds, counted on the meta device."""
    with torch.device("meta"):
        model = EchoVideoTransformer3DModel(**config)
    return {key: (tuple(t.shape), t.dtype) for key, t in model.state_dict().items()}


def write_weights(folder: Path, config: dict) -> None:
    """The transformer's random weights in the released layout (see `write_random_weights`)."""
    def save_config(staging: Path) -> None:
        with torch.device("meta"):
            EchoVideoTransformer3DModel(**config).save_config(str(staging))

    write_random_weights(folder, released_shapes(config), SHARD, INDEX_NAME, save_config)


def write_random_weights(folder: Path, shapes: dict, shard_name: str, index_name: str,
                         save_config: Callable[[Path], None]) -> None:
    """Random bf16 tensors of these shapes in two safetensors shards split near the middle by bytes, their
    index, the model's config. Written under a temporary name and renamed, so a killed run leaves no half
    folder."""
    from safetensors.torch import save_file

    total = sum(torch.Size(shape).numel() * 2 for shape, _ in shapes.values())
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    generator, weight_map, shard, shard_bytes, index = torch.Generator().manual_seed(0), {}, {}, 0, 1
    for key, (shape, _) in shapes.items():
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        if key.endswith("bias"):
            tensor.zero_()
        elif "norm" in key and key.endswith("weight"):
            tensor.fill_(1.0)
        else:  # the scale of a trained projection: activations stay finite through every block
            tensor.normal_(0.0, 0.02, generator=generator)
        shard[key], weight_map[key] = tensor, shard_name.format(index)
        shard_bytes += tensor.numel() * 2
        if index == 1 and shard_bytes >= total / 2:
            save_file(shard, str(staging / shard_name.format(index)), metadata={"format": "pt"})
            shard, index = {}, 2
    save_file(shard, str(staging / shard_name.format(index)), metadata={"format": "pt"})
    (staging / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    save_config(staging)
    staging.rename(folder)


def evict(folder: Path) -> None:
    """Drop the shards' pages from the page cache (clean pages: no privilege needed), so the load reads disk."""
    for path in folder.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def io_counters() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def where_parameters_live(model: torch.nn.Module, folder: Path) -> dict[str, float]:
    """GiB of parameters inside a mapping of a shard file (mmapped) and outside one (copied)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith(str(folder)):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    mapped = copied = 0
    for pointer, size in {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.items():
        inside = any(start <= pointer < end for start, end in ranges)
        mapped, copied = (mapped + size, copied) if inside else (mapped, copied + size)
    return {"mmapped_gib": round(mapped / GIB, 2), "copied_gib": round(copied / GIB, 2)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def load(folder: Path) -> tuple[EchoVideoTransformer3DModel, dict]:
    """The product's load, measured from this (fresh) process's own counters."""
    evict(folder)
    before, base_rss, started = io_counters(), rss_gib(), time.perf_counter()
    model = EchoVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    seconds, after = time.perf_counter() - started, io_counters()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / GIB
    report = {"load_s": round(seconds, 1), "weights_gib": round(weights, 2),
              "load_peak_rss_gib": round(peak_rss_gib() - base_rss, 2),
              "load_disk_read_gib": round((after["read_bytes"] - before["read_bytes"]) / GIB, 2),
              "load_read_calls_gib": round((after["rchar"] - before["rchar"]) / GIB, 2),
              **where_parameters_live(model, folder)}
    started = time.perf_counter()  # mmapped pages come in on first use: read every weight once, as a forward does
    for tensor in model.state_dict().values():
        tensor.view(-1)[:: max(1, 4096 // tensor.element_size())].sum()
    touched = io_counters()
    resident = rss_gib() - base_rss
    return model, {**report, "first_touch_s": round(time.perf_counter() - started, 1),
                   "first_touch_disk_read_gib": round((touched["read_bytes"] - after["read_bytes"]) / GIB, 2),
                   "resident_after_touch_gib": round(resident, 2), "peak_over_weights": round(
                       (peak_rss_gib() - base_rss) / weights, 3)}


def matmul_rate(dtype: torch.dtype, size: int) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * size**3 / (time.perf_counter() - started)


def forward_inputs(model: EchoVideoTransformer3DModel, height: int, width: int):
    c, generator = model.config, torch.Generator().manual_seed(1)
    latents = torch.randn((1, 1, c.in_channels, height // 8, width // 8), generator=generator)
    text = torch.randn((1, c.max_text_seq_length, c.text_embed_dim), generator=generator)
    rotary = model.rotary_embedding(1, height // 8, width // 8, torch.device("cpu"))
    return latents, torch.tensor([500]), text, rotary


def run_forward(model, inputs, dtype: torch.dtype, cast_blocks: bool) -> tuple[torch.Tensor, float]:
    """One forward of every block in `dtype` -> (output, seconds computing). `cast_blocks`: each block (and
    the embedding and head) is cast from the bf16 model just before it runs and dropped after; the casts are
    not counted."""
    latents, t, text, rotary = inputs
    with torch.no_grad():
        if not cast_blocks:
            started = time.perf_counter()
            out = model(latents.to(dtype), t, fused_text=text.to(dtype), image_rotary_emb=rotary)
            return out.float(), time.perf_counter() - started

        def wide(module: torch.nn.Module) -> torch.nn.Module:
            return copy.deepcopy(module).to(dtype)

        time_embedding, embed = wide(model.time_embedding), wide(model.patch_embed)
        norm_final, norm_out, proj_out = wide(model.norm_final), wide(model.norm_out), wide(model.proj_out)
        started = time.perf_counter()
        temb = time_embedding(model.time_proj(t).to(dtype))
        embedded = embed(text.to(dtype), latents.to(dtype))
        text_tokens, video = embedded[:, :text.shape[1]], embedded[:, text.shape[1]:]
        computing = time.perf_counter() - started
        for block in model.transformer_blocks:
            cast = wide(block)
            started = time.perf_counter()
            video, text_tokens = cast(hidden_states=video, encoder_hidden_states=text_tokens, temb=temb,
                                      image_rotary_emb=rotary)
            computing += time.perf_counter() - started
            del cast
        started = time.perf_counter()
        out = model.unpatchify(proj_out(norm_out(norm_final(video), temb=temb)), 1, latents.shape[3],
                               latents.shape[4])
        return out.float(), computing + time.perf_counter() - started


def forward_report(model, height: int, width: int, matmul_size: int) -> dict:
    c = model.config
    hidden, video_tokens = c.num_attention_heads * c.attention_head_dim, (height // 16) * (width // 16)
    tokens = video_tokens + c.max_text_seq_length
    flops = c.num_layers * (24 * tokens * hidden**2 + 4 * tokens * tokens * hidden)
    inputs = forward_inputs(model, height, width)
    before = rss_gib()
    bf16, bf16_s = run_forward(model, inputs, torch.bfloat16, cast_blocks=False)
    activation_peak = peak_rss_gib() - before  # the load's peak is below: this is what the forward added
    fp32, fp32_s = run_forward(model, inputs, torch.float32, cast_blocks=True)
    rates = {name: matmul_rate(dtype, matmul_size) for name, dtype in (("bf16", torch.bfloat16),
                                                                      ("fp32", torch.float32))}
    predicted = tokens * hidden * 2 * costs.ACTIVATION_FACTOR / GIB
    return {"tokens": tokens, "tflop": round(flops / 1e12, 2),
            "bf16_forward_s": round(bf16_s, 1), "fp32_forward_s": round(fp32_s, 1),
            "bf16_tflops": round(flops / bf16_s / 1e12, 3), "fp32_tflops": round(flops / fp32_s / 1e12, 3),
            "bf16_share_of_matmul_rate": round(flops / bf16_s / rates["bf16"], 3),
            "fp32_share_of_matmul_rate": round(flops / fp32_s / rates["fp32"], 3),
            "matmul_tflops": {k: round(v / 1e12, 3) for k, v in rates.items()},
            "bf16_vs_fp32_rel_error": round(float((bf16 - fp32).norm() / fp32.norm()), 5),
            "finite": bool(torch.isfinite(bf16).all() and torch.isfinite(fp32).all()),
            "activation_peak_gib": round(max(activation_peak, 0.0), 3), "costs_activation_gib": round(predicted, 3)}


def child(folder: Path, skip_forward: bool, smoke: bool) -> None:
    """The measuring process: a fresh interpreter, so its peak memory is the load's and the forward's alone."""
    torch.set_grad_enabled(False)
    model, report = load(folder)
    if not skip_forward:
        height, width = (64, 96) if smoke else (480, 848)
        report.update(forward_report(model, height, width, 512 if smoke else 4096))
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache_dir() / "full-size-transformer")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--delete", action="store_true", help="remove the cached weights and stop")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.skip_forward, args.smoke)
    folder = args.cache.with_name(args.cache.name + "-smoke") if args.smoke else args.cache
    if args.delete:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}")
        return
    config = SMOKE_CONFIG if args.smoke else {}
    shapes = released_shapes(config)
    params = sum(torch.Size(shape).numel() for shape, _ in shapes.values())
    if not args.smoke:
        assert (len(shapes), params) == (RELEASED_KEYS, RELEASED_PARAMS), (len(shapes), params)
    print(f"transformer: {len(shapes)} tensors, {params:,} parameters ({params * 2 / GIB:.2f} GiB in bf16); "
          f"parallel.costs plans {costs.DIT_PARAMS * 2 / GIB:.2f} GiB of weights per rank")
    if not folder.is_dir():
        started = time.perf_counter()
        write_weights(folder, config)
        print(f"wrote {folder} in {time.perf_counter() - started:.0f} s")
    command = [sys.executable, __file__, "--child", str(folder)] + ["--skip-forward"] * args.skip_forward + \
        ["--smoke"] * args.smoke
    shown = subprocess.run(command, capture_output=True, text=True)
    if shown.returncode:
        sys.exit(shown.stderr[-3000:])
    report = json.loads(shown.stdout.strip().splitlines()[-1])
    for key, value in report.items():
        print(f"{key}: {value}")
    forward = "" if args.skip_forward else (f"; bf16 forward at {report['bf16_share_of_matmul_rate']:.2f} of the bf16 "
                                            f"matmul rate, {report['bf16_vs_fp32_rel_error']:.4f} from fp32")
    print(f"headline: peak resident memory {report['peak_over_weights']:.3f}x the weights "
          f"({report['mmapped_gib']} GiB mmapped, {report['copied_gib']} GiB copied){forward}")


if __name__ == "__main__":
    main()
