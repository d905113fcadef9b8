"""RankWorker: one rank of a replica (a Ray actor). All ranks denoise together; rank 0 writes the files.

A plain class, made an actor by the replica (`ray.remote(RankWorker)`), so it holds no Ray state of its
own and the driver can pass per-rank resources at creation. The actor runs two calls at once so the
driver can read its progress clock (`seconds_since_progress`) while `render` is busy.
"""

import logging
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from echovideo.sampling import GenerationOptions
from echovideo.video_io import atomic_output, write_mp4

DEVICE_KIND = {"gpu": "cuda", "npu": "npu", "cpu": "cpu"}


class RankWorker:
    def __init__(self, rank: int, world: int, log_path: str | None = None) -> None:
        self.rank, self.world, self.pipe = rank, world, None
        self.progress_at = time.monotonic()
        self.log = _rank_log(log_path) if log_path else logging.getLogger("ray_jobs.worker")

    def seconds_since_progress(self) -> float:
        """Since the last finished denoising step (or render start/end): the driver's no-progress clock."""
        return time.monotonic() - self.progress_at

    def _progressed(self, *_) -> None:
        self.progress_at = time.monotonic()

    def rendezvous(self) -> tuple[str, int]:
        """This node's IP and a port free on it: rank 0's address for the group (distinct per replica)."""
        import ray

        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def placement(self) -> dict:
        """Where this rank runs and what Ray gave it: node, devices, process id (placement checks, logs)."""
        import os

        import ray

        return {"accelerators": ray.get_runtime_context().get_accelerator_ids(),
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "ASCEND_RT_VISIBLE_DEVICES": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def setup(self, model: dict, parallel: dict, accelerator: str, address: tuple[str, int],
              timeout_s: float) -> None:
        """Join the replica's group (tcp://rank0:port) and load the parallel pipeline on this rank's device."""
        from echovideo.presets.tiny import tiny_checkpoint
        from parallel import ParallelConfig
        from parallel.launch import init_group, local_device
        from parallel.pipeline import ParallelEchoVideoPipeline

        kind = DEVICE_KIND[accelerator]
        device = local_device(kind, 0)  # Ray sets CUDA_/ASCEND_RT_VISIBLE_DEVICES: the actor's device is 0
        timeout = timedelta(seconds=timeout_s)
        # Before joining the group: transformers' save_pretrained writes weights only on distributed rank 0.
        root = Path(model["checkpoint"]) if model["checkpoint"] else tiny_checkpoint()
        init_group(kind, self.rank, self.world, f"tcp://{address[0]}:{address[1]}", timeout)
        config = ParallelConfig(ulysses=parallel["ulysses"], ring=parallel["ring"], cfg=parallel["cfg"])
        self.pipe = ParallelEchoVideoPipeline.from_pretrained(root, config, device=str(device), dtype=model["dtype"],
                                                              scheduler=model["scheduler"], timeout=timeout,
                                                              compile=model["compile"])
        self.log.info("rank %d/%d ready on %s (%s), group tcp://%s:%d, %s", self.rank, self.world, device,
                      self.placement()["accelerators"], *address, root)

    def render(self, sample_id: str, prompt: str, image: bytes | None, options: dict, video: str,
               poster: str) -> dict:
        """Every rank calls this with the same sample (only rank 0 gets the image). Rank 0 returns timings."""
        started = time.monotonic()
        self._progressed()
        self.log.info("sample %s: started (%d steps)", sample_id, options["steps"])
        try:
            result = self.pipe(prompt, image, GenerationOptions(**options), on_step=self._progressed)
            self._progressed()
            if self.rank == 0:
                write_mp4(result.frames, video, fps=result.fps)
                _write_poster(result.frames, Path(poster))
        except Exception as exc:
            self.log.error("sample %s: failed: %s: %s", sample_id, type(exc).__name__, exc)
            raise
        seconds = time.monotonic() - started
        self.log.info("sample %s: done in %.2f s", sample_id, seconds)
        return {"seconds": seconds, "frames": int(result.frames.shape[0])} if self.rank == 0 else {}


def _rank_log(path: str) -> logging.Logger:
    """This rank's log file in the job's output (`logs/replica-R-rank-K.log`), with the model's warnings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray_jobs", "echovideo", "parallel"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return logging.getLogger("ray_jobs.worker")


def _write_poster(frames: np.ndarray, path: Path) -> None:
    """The middle frame as a JPEG: what the gallery shows before a clip is played."""
    with atomic_output(path, ".jpg") as tmp:
        Image.fromarray(frames[len(frames) // 2]).save(tmp, format="JPEG", quality=85)
