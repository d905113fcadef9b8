"""The T5 v1.1 XXL encoder at real size on the CPU (4,762,310,656 parameters, random bf16 weights in the
Hugging Face layout CogVideoX ships), loaded as `echovideo.loading` loads it and run on one prompt.

Measured alone, not beside the DiT: its 9.5 GB and the DiT's 10.5 GB would not both stay resident in 24 GiB
with a forward's working memory (`full_size.py` measures the DiT). Load: seconds, peak resident memory
against the weights, mmapped or copied (as `full_size.py`). Encode: one prompt of 226 tokens (the pipeline's
padded length) in bf16, FLOP/s against this CPU's bf16 matmul rate.

    python benchmarks/full_size_t5.py            # writes ~9.5 GB once into the cache, then measures
    python benchmarks/full_size_t5.py --delete   # remove the cached weights
    python benchmarks/full_size_t5.py --smoke    # a 2-layer narrow T5: checks the script in seconds
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from full_size import (  # noqa: E402
    GIB,
    evict,
    io_counters,
    matmul_rate,
    peak_rss_gib,
    rss_gib,
    where_parameters_live,
    write_random_weights,
)

from echovideo.locations import default_cache_dir  # noqa: E402
from parallel import costs  # noqa: E402

SHARD, INDEX = "model-{:05d}-of-00002.safetensors", "model.safetensors.index.json"
TOKENS = 226  # the pipeline pads every prompt to this
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
          "tie_word_embeddings": False}
SMOKE = {**T5_XXL, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}


def t5_config(smoke: bool):
    from transformers import T5Config

    return T5Config(**(SMOKE if smoke else T5_XXL))


def shapes_of(config) -> dict:
    """The encoder's tensors as its checkpoint holds them: the shared embedding once (the encoder's own
    embedding is tied to it on load)."""
    from transformers import T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(config)
    return {k: (tuple(t.shape), t.dtype) for k, t in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def child(folder: Path) -> None:
    """A fresh process: the load as `echovideo.loading` does it, then one prompt's encode."""
    from transformers import T5EncoderModel

    torch.set_grad_enabled(False)
    evict(folder)
    before, base, started = io_counters(), rss_gib(), time.perf_counter()
    model = T5EncoderModel.from_pretrained(str(folder), use_safetensors=True, dtype=torch.bfloat16).eval()
    load_s, after = time.perf_counter() - started, io_counters()
    weights = sum(t.numel() * t.element_size() for t in model.parameters()) / GIB
    report = {"load_s": round(load_s, 1), "weights_gib": round(weights, 2),
              "load_disk_read_gib": round((after["read_bytes"] - before["read_bytes"]) / GIB, 2),
              **where_parameters_live(model, folder)}
    tokens = torch.randint(0, model.config.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    model(tokens)  # the first call pages every weight in
    resident = rss_gib() - base
    started = time.perf_counter()
    out = model(tokens).last_hidden_state
    encode_s = time.perf_counter() - started
    c = model.config
    flops = 2 * TOKENS * sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "shared" not in n) \
        + c.num_layers * 4 * TOKENS * TOKENS * c.num_heads * c.d_kv
    rate = matmul_rate(torch.bfloat16, 512 if c.d_model < 1024 else 4096)
    report.update({"resident_after_first_encode_gib": round(resident, 2),
                   "peak_over_weights": round((peak_rss_gib() - base) / weights, 3),
                   "encode_s": round(encode_s, 2), "encode_tflops": round(flops / encode_s / 1e12, 3),
                   "share_of_bf16_matmul_rate": round(flops / encode_s / rate, 3), "finite": bool(out.isfinite().all()),
                   "params": sum(p.numel() for p in model.parameters())})
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache_dir() / "full-size-t5-xxl")
    parser.add_argument("--delete", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    folder = args.cache.with_name(args.cache.name + "-smoke") if args.smoke else args.cache
    if args.delete:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}")
        return
    config = t5_config(args.smoke)
    shapes = shapes_of(config)
    params = sum(torch.Size(shape).numel() for shape, _ in shapes.values())
    if not args.smoke:
        assert params == costs.T5_PARAMS, params
    print(f"T5 encoder: {len(shapes)} tensors, {params:,} parameters ({params * 2 / GIB:.2f} GiB in bf16); "
          f"parallel.costs plans {costs.T5_PARAMS * 2 / GIB:.2f} GiB")
    if not folder.is_dir():
        started = time.perf_counter()
        write_random_weights(folder, shapes, SHARD, INDEX, lambda staging: config.save_pretrained(str(staging)))
        print(f"wrote {folder} in {time.perf_counter() - started:.0f} s")
    shown = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True)
    if shown.returncode:
        sys.exit(shown.stderr[-3000:])
    report = json.loads(shown.stdout.strip().splitlines()[-1])
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"headline: T5 encoder at {report['peak_over_weights']:.3f}x its weights resident "
          f"({report['copied_gib']} GiB copied); one {TOKENS}-token prompt in {report['encode_s']} s, "
          f"{report['share_of_bf16_matmul_rate']:.2f} of the bf16 matmul rate")


if __name__ == "__main__":
    main()
