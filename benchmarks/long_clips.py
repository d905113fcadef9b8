"""Long clips under sequence parallelism: peak memory per rank of one DiT step and of the parallel VAE decode,
for 97- and 193-frame clips, against the ranks' count P (Ulysses, gloo, CPU).

A CPU RSS proxy for activation memory: a thread samples each rank's resident set every 2 ms during the
phase, and the peak over the level just before it is reported (weights and conditioning are already
resident, so what is left is activations and buffers). Tiny preset, fp32, RIFLEx on, CFG (batch 2), so
attention is over 3,750 (97 frames) or 7,350 (193 frames) video tokens.

Prediction: the DiT step's peak falls roughly as 1/P (Ulysses gives each rank all tokens of 1/P of the
heads for attention, and 1/P of the tokens everywhere else); the decode's peak falls with the tiles each
rank decodes, and does not grow with frames beyond the first temporal batch (diffusers decodes latent
frames in batches with a causal cache), except on rank 0, which holds the whole decoded video.

    python benchmarks/long_clips.py            # 97 and 193 frames, P = 1, 2, 4, 160x240
    python benchmarks/long_clips.py --size 320x480   # large enough for the VAE to tile
    python benchmarks/long_clips.py --smoke    # 97 frames, P = 1, 2, 64x64
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from distributed import run_ranks  # noqa: E402  (real gloo groups, one process per rank)

FACE = ROOT / "echovideo" / "assets" / "astronaut.jpg"


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident set over the level at entry, sampled every 2 ms by a thread."""

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = rss_mb()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def grown_mb(self) -> float:
        return self.peak - self.base


def measure(rank: int, root: str, frames: int, height: int, width: int, out: str) -> None:
    import torch.distributed as dist

    from echovideo.pipeline import EchoVideoPipeline
    from echovideo.sampling import GenerationOptions
    from parallel import ParallelConfig, ParallelMesh
    from parallel.pipeline import ParallelEchoVideoPipeline
    from parallel.vae import parallel_decode

    pipe = EchoVideoPipeline.from_pretrained(root, device="cpu", dtype="fp32")
    world = dist.get_world_size()
    mesh = ParallelMesh.create(ParallelConfig(ulysses=world), pipe.transformer.config.num_attention_heads)
    parallel = ParallelEchoVideoPipeline(pipe, mesh)
    opts = GenerationOptions(height=height, width=width, frames=frames, steps=1, seed=1, riflex=True).validate()
    state = parallel.shared_state("a person walks along a beach", str(FACE), opts)
    dist.barrier()
    with PeakRSS() as dit:
        latents = pipe.denoise(state, opts, predict=parallel.engine, progress=False)
    dist.barrier()
    with PeakRSS() as vae:
        pipe.decode(latents, lambda z: parallel_decode(pipe.vae, z))
    Path(out, f"{rank}.json").write_text(json.dumps({"dit": dit.grown_mb, "vae": vae.grown_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--size", default="160x240", help="HEIGHTxWIDTH; the VAE tiles (and so spreads its "
                                                          "decode over the ranks) above 240x360")
    args = parser.parse_args()
    frames_list, ranks_list, (height, width) = ((97,), (1, 2), (64, 64)) if args.smoke else \
        ((97, 193), (1, 2, 4), tuple(int(side) for side in args.size.split("x")))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ECHOVIDEO_CACHE", tmp)
        from echovideo.presets.tiny import tiny_checkpoint

        root = str(tiny_checkpoint())
        print(f"tiny, fp32, CPU, {width}x{height}, CFG, 1 step; peak RSS over the level before each phase, MB")
        print(f"{'frames':>6} {'P':>2} {'DiT step per rank (max)':>24} {'VAE decode rank 0':>18} "
              f"{'VAE decode others (max)':>24}")
        ratios = []
        for frames in frames_list:
            single = None
            for ranks in ranks_list:
                out = Path(tmp, f"{frames}-{ranks}")
                out.mkdir()
                started = time.perf_counter()
                run_ranks(ranks, measure, root, frames, height, width, str(out))
                peaks = [json.loads((out / f"{r}.json").read_text()) for r in range(ranks)]
                dit = max(p["dit"] for p in peaks)
                others = max((p["vae"] for p in peaks[1:]), default=float("nan"))
                single = single or dit
                ratios.append((frames, ranks, dit / single))
                print(f"{frames:>6} {ranks:>2} {dit:>24.0f} {peaks[0]['vae']:>18.0f} {others:>24.0f}"
                      f"   ({time.perf_counter() - started:.0f} s)")
    last = [f"{f} f P={p}: x{r:.2f}" for f, p, r in ratios if p == ranks_list[-1]]
    print(f"headline: DiT step peak per rank vs P=1 at P={ranks_list[-1]}: {', '.join(last)}")


if __name__ == "__main__":
    main()
