"""What a parallel layout of the released model costs per rank, before anything runs: tokens, peak memory
(weights, T5, activations, VAE decode) and step and clip time, from the work sizes and a device table.

A model, not a measurement. Its inputs are the released architecture (exact), the device table
(`parallel/devices.json`: versioned, dated, every figure marked measured, published or estimated) and
one fitted constant (ACTIVATION_FACTOR). A GPU check (`benchmarks/gpu_check.py`) measures what the table
estimates, and the table is updated from it. What it leaves out: kernel efficiency falling at small
per-rank shapes, collective latency, allocator fragmentation beyond RESERVE_GIB.
"""

import json
import math
from dataclasses import dataclass, field
from importlib import resources

from echovideo.sampling import latent_frames
from parallel.config import ParallelConfig

# The released transformer (echovideo-model.md; `EchoVideoTransformer3DModel()` counted on the meta device).
LAYERS, HEADS, HEAD_DIM = 42, 48, 64
HIDDEN = HEADS * HEAD_DIM
TEXT_TOKENS = 226
PATCH_OUT = 2 * 2 * 16  # values a video token predicts (2x2 patch, 16 latent channels)
DIT_PARAMS = 5_621_259_202
T5_PARAMS = 4_762_310_656  # T5 v1.1 XXL encoder, CogVideoX's text encoder
VAE_PARAMS = 215_587_000  # AutoencoderKLCogVideoX
SMALL_MODELS_GIB = 1.0  # SigLIP, the face stage on the device, the scheduler's latents: rank 0
# Live (tokens x hidden) tensors at a block's peak in inference (residual, norm, q/k/v, attention output, the
# MLP's 4x hidden and its GELU): fitted to the spec's 13.5-15 GiB peak for 480x848x49 on one device.
ACTIVATION_FACTOR = 14.0
RESERVE_GIB = 1.5  # CUDA context and allocator slack: never planned for tensors
GIB = 2**30
# Per-clip work outside the steps and the decode, on rank 0 while the other ranks wait (`fixed_clip_seconds`).
# Host figures are measured on the 2-core CI machine (benchmarks/RESULTS.md: "Quality scores", "Object-store
# job outputs"); device figures are estimates until a GPU check measures them.
MP4_ENCODE_S_PER_MPIXEL = 0.561 / (49 * 480 * 848 / 1e6)  # libx264 of the clip, measured (49x480x848: 561 ms)
MP4_CHECK_S_PER_MPIXEL = 1.0 / (49 * 720 * 480 / 1e6)  # decoding it back to count frames, measured (1.0 s)
MOTION_S_PER_PAIR = 0.115  # Farneback at 480x848 on one core, measured; scaled by pixels, spread over HOST_CORES
HOST_CORES = 8  # a GPU node's cores the flow pairs spread over (the measurement's pool caps at 8)
FACE_S_PER_FRAME = 0.008  # SCRFD + ArcFace on the device per scored frame, estimate
FACE_STAGE_S = 0.3  # a new photo's detection, parsing, ArcFace and SigLIP on the device, estimate (memoised)
OUTPUT_S = 0.09  # poster, thumbnail, json, completion record of one clip, measured (local folder, tiny clip)
UPLOAD_BYTES_PER_S = 100e6  # rank 0 to an object store, estimate; clips are written at ~MP4_BYTES_PER_PIXEL
MP4_BYTES_PER_PIXEL = 0.05  # libx264's default CRF on generated video, estimate (~1 MB for 49x480x848)


def comm_bytes_per_forward(c: int, u: int, r: int, layers: int, video_tokens: int, text_tokens: int,
                           patch_out: int, elem: int = 4, hidden: int = HIDDEN) -> dict[str, float]:
    """Bytes each rank sends per forward, by kind (the USP volumes; `benchmarks/comm_volume.py` measures our
    collectives against them); each CFG group carries 2/c of the batch of two branches."""
    p, batch = u * r, 2 // c
    s = video_tokens + text_tokens
    output = video_tokens * patch_out * elem
    return {"ulysses": batch * layers * 4 * s * hidden * elem / p * (u - 1) / u,
            "ring": batch * layers * 2 * (s / r) * (hidden / u) * elem * (r - 1),
            "gather": batch * output * (p - 1) / p, "cfg": output * (c - 1)}


@dataclass(frozen=True)
class Clip:
    height: int
    width: int
    frames: int
    steps: int
    cfg: bool = True  # guidance > 1: two branches a step

    @property
    def video_tokens(self) -> int:
        return latent_frames(self.frames) * (self.height // 16) * (self.width // 16)

    def describe(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}, {self.steps} steps"


@dataclass
class Cost:
    layout: ParallelConfig
    tokens_per_rank: int
    memory_gib: dict[str, float] = field(default_factory=dict)  # weights, t5, activations, vae, peak
    step_s: float = 0.0
    clip_s: float = 0.0
    problem: str | None = None  # why it does not fit or cannot run; None if it does

    @property
    def fits(self) -> bool:
        return self.problem is None


def load_devices() -> dict:
    """The device table (`parallel/devices.json`)."""
    return json.loads(resources.files("parallel").joinpath("devices.json").read_text())


def layouts(ranks: int, cfg: bool = True) -> list[ParallelConfig]:
    """Every (cfg, ulysses, ring) of `ranks` ranks whose Ulysses degree divides the heads."""
    return [ParallelConfig(ulysses=u, ring=ranks // (c * u), cfg=c) for c in ((1, 2) if cfg else (1,))
            for u in range(1, ranks + 1) if ranks % (c * u) == 0 and HEADS % u == 0]


def vae_tiles(clip: Clip) -> int:
    """Spatial tiles of diffusers' tiled decode (60x90 latent tiles, 1/6 overlap): what parallel decode splits."""
    height, width = clip.height // 8, clip.width // 8
    if height <= 60 and width <= 90:
        return 1
    return len(range(0, height, 50)) * len(range(0, width, 75))


def layout_cost(clip: Clip, layout: ParallelConfig, device: dict, weight_bytes: int = 2) -> Cost:
    """Per-rank tokens, peak memory and times of one clip on one replica of `layout` on `device`."""
    if HEADS % layout.ulysses:
        return Cost(layout, 0, problem=f"{HEADS} heads do not split over ulysses={layout.ulysses}")
    if layout.cfg == 2 and not clip.cfg:
        return Cost(layout, 0, problem="cfg=2 with guidance <= 1: half the ranks would repeat the other half")
    sequence = layout.sequence
    batch = (2 if clip.cfg else 1) // layout.cfg
    tokens = math.ceil(clip.video_tokens / sequence) + TEXT_TOKENS  # text replicated on every rank
    total = clip.video_tokens + TEXT_TOKENS
    memory = {"weights": DIT_PARAMS * weight_bytes / GIB,
              "t5": T5_PARAMS * 2 / GIB,  # rank 0, while encoding; moved off the device after
              "activations": batch * tokens * HIDDEN * weight_bytes * ACTIVATION_FACTOR / GIB,
              "vae": VAE_PARAMS * 2 / GIB + device["vae_tile_gib"] + clip.frames * clip.height * clip.width * 12 / GIB}
    phases = {"encode": memory["weights"] + memory["t5"] + SMALL_MODELS_GIB,
              "denoise": memory["weights"] + memory["activations"] + SMALL_MODELS_GIB,
              "decode": memory["weights"] + memory["vae"] + SMALL_MODELS_GIB}
    memory["peak"] = max(phases.values())
    peak_phase = max(phases, key=phases.get)
    dense = batch * LAYERS * 24 * tokens * HIDDEN**2
    attention = batch * LAYERS * 4 * total * total * HIDDEN / sequence
    compute = dense / (device["matmul_tflops"] * 1e12 * device["dense_efficiency"]) + \
        attention / (device["attention_tflops"] * 1e12)
    sent = comm_bytes_per_forward(layout.cfg, layout.ulysses, layout.ring, LAYERS, clip.video_tokens, TEXT_TOKENS,
                                  PATCH_OUT, weight_bytes)
    link = device["link_gbps"] * 1e9
    attention_s = attention / (device["attention_tflops"] * 1e12)
    exposed_ring = max(0.0, sent["ring"] / link - attention_s)  # ring passes overlap the attention
    step = compute + (sent["ulysses"] + sent["gather"] + sent["cfg"]) / link + exposed_ring
    scale = clip.height * clip.width * clip.frames / (480 * 848 * 49)
    decode = device["vae_seconds_480x848x49"] * scale / min(layout.world, vae_tiles(clip))
    fixed = sum(fixed_clip_seconds(clip, device).values())
    cost = Cost(layout, tokens, {k: round(v, 2) for k, v in memory.items()}, step, clip.steps * step + decode + fixed)
    usable = device["memory_gib"] - RESERVE_GIB
    if memory["peak"] > usable:
        cost.problem = (f"peak {memory['peak']:.1f} GiB per rank ({peak_phase}) > {usable:.1f} GiB usable on "
                        f"{device['name']}")
    return cost


def fixed_clip_seconds(clip: Clip, device: dict) -> dict[str, float]:
    """What every clip pays besides its steps and its decode, by term: the prompt's T5 forward(s) (prompt and
    negative under CFG), the face stage for a new photo (counted for every clip: the worst case, a photo per
    clip), the mp4's encode and the check that decodes it back, the scores (faces on scored frames, motion on
    the host), the output's small files and record, and the upload. They set a floor under the clip time, so
    a tiny clip is not planned at millions an hour."""
    megapixels = clip.frames * clip.height * clip.width / 1e6
    scored = (clip.frames + 1) // 2  # every second frame at 16 fps (`metrics.quality.frame_stride`)
    matmul = device["matmul_tflops"] * 1e12 * device["dense_efficiency"]
    return {"prompt encode": (2 if clip.cfg else 1) * 2 * T5_PARAMS * TEXT_TOKENS / matmul,
            "face stage": FACE_STAGE_S,
            "mp4 encode": MP4_ENCODE_S_PER_MPIXEL * megapixels,
            "mp4 check": MP4_CHECK_S_PER_MPIXEL * megapixels,
            "scores": scored * FACE_S_PER_FRAME + (scored - 1) * MOTION_S_PER_PAIR * clip.height * clip.width /
            (480 * 848) / HOST_CORES,
            "output files": OUTPUT_S,
            "upload": megapixels * 1e6 * MP4_BYTES_PER_PIXEL / UPLOAD_BYTES_PER_S}
