"""RankWorker: one rank of a replica (a Ray actor). All ranks denoise together; rank 0 writes the files.

A plain class, made an actor by the replica (`ray.remote(RankWorker)`), so it holds no Ray state of its
own and the driver can pass per-rank resources at creation. It runs one call at a time (a rank can never
be in two samples at once); only the read-only probes (`seconds_since_progress`, `placement`) run in their
own concurrency group, so the driver can read the progress clock while `render` is busy.
"""

import json
import logging
import os
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from echovideo.images import decode_identity_image
from echovideo.sampling import GenerationOptions
from echovideo.video_io import check_mp4, file_sha256, write_mp4
from ray_jobs.data.job import DEVICE_KIND
from ray_jobs.data.records import Kind
from ray_jobs.runtime.failures import Failure, SampleFailure, classify
from ray_jobs.store.access import StorageCredentials
from ray_jobs.store.destination import Destination

PROBES = "probes"  # the concurrency group of the read-only calls
CONCURRENCY_GROUPS = {PROBES: 1}
THUMBNAIL_SIDE = 160
HCCL_BASE_PORT, HCCL_PORTS_PER_DEVICE = 60000, 16  # HCCL listens on base + logical device id (0..15)
LOG_UPLOAD_EVERY_S = 30.0  # an object-store output gets a rank's log at most this often (and after a failure)


class RankWorker:
    def __init__(self, rank: int, world: int, output: str | None = None, log_name: str | None = None,
                 credentials: StorageCredentials | None = None) -> None:
        """`output`: the job's output (a folder or an object-store URI); rank 0 writes there, every rank logs
        to `logs/<log_name>` in it. `credentials`: the driver's storage variables (`access`), installed first."""
        if credentials is not None:
            credentials.install()  # this actor's process is this rank's alone
        self.rank, self.world, self.pipe = rank, world, None
        self.progress_at = time.monotonic()
        self.phase = "starting"  # what setup is doing: the driver names it when a start stalls
        self.store = None  # rank 0's rendezvous store, bound from `rendezvous` until the group forms
        self.destination = Destination(output) if output else None
        self.log_name, self.log_uploaded_at = log_name, 0.0
        self.log_file = _log_file(self.destination, log_name)
        self.log = _rank_log(self.log_file) if self.log_file else logging.getLogger("ray_jobs.runtime.worker")

    @ray.method(concurrency_group=PROBES)
    def seconds_since_progress(self) -> float:
        """Since the last finished denoising step (or render start/end): the driver's no-progress clock."""
        return time.monotonic() - self.progress_at

    def _progressed(self, *_) -> None:
        self.progress_at = time.monotonic()

    @ray.method(concurrency_group=PROBES)
    def start_progress(self) -> tuple[str, float]:
        """While setup runs: (its phase, this process's CPU seconds). A rank importing, reading weights or
        compiling uses CPU however slowly a busy node lets it; one stuck on a hung mount or a dead peer does
        not, and neither changes phase: that silence, not the time taken, is what the driver's start clock
        counts."""
        return self.phase, time.process_time()

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self._progressed()

    def rendezvous(self, timeout_s: float = 300) -> tuple[str, int]:
        """Rank 0: open the group's store on the node's address (the one Ray reports: 127.0.0.1 on the
        embedded cluster; TCPStore itself would listen on every interface, unauthenticated) and a port the OS
        picks, kept bound until the group forms; return that address and port."""
        import torch.distributed as dist

        address = ray.util.get_node_ip_address()
        self.listener = socket.create_server((address, 0), family=socket.AF_INET6 if ":" in address else
                                             socket.AF_INET, backlog=max(self.world, 16))
        port = self.listener.getsockname()[1]
        self.store = dist.TCPStore(address, port, self.world, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=timeout_s), master_listen_fd=self.listener.fileno())
        return address, port

    @ray.method(concurrency_group=PROBES)
    def placement(self) -> dict:
        """Where this rank runs and what Ray gave it: node, devices, process id (placement checks, logs)."""
        return {"accelerators": ray.get_runtime_context().get_accelerator_ids(),
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "ASCEND_RT_VISIBLE_DEVICES": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
                "HCCL_IF_BASE_PORT": os.environ.get("HCCL_IF_BASE_PORT"),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def group_environment(self, accelerator: str) -> dict[str, str]:
        """Variables this rank's backend needs before the group forms.

        The backend's own listeners bind the node's address too (gloo and NCCL by its interface, HCCL by the
        address; a value the node already set is kept): left alone, they pick the interface the host name
        resolves to, a network address even on a loopback cluster.
        Every rank on an Ascend node sees its NPU as logical device 0, and HCCL listens on
        HCCL_IF_BASE_PORT + logical id: all ranks of a node would take one port. Each rank gets the port
        range of its physical NPU instead (Ray never gives two actors one NPU), above the base the node set.
        """
        address = ray.util.get_node_ip_address()
        interface = interface_of(address)
        if accelerator == "npu":
            physical = int(ray.get_runtime_context().get_accelerator_ids()["NPU"][0])
            base = int(os.environ.get("HCCL_IF_BASE_PORT", HCCL_BASE_PORT))
            wanted = {"HCCL_IF_IP": address, "HCCL_IF_BASE_PORT": str(base + HCCL_PORTS_PER_DEVICE * physical)}
        else:
            wanted = {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface} if interface else {}
        return {name: value for name, value in wanted.items()
                if name == "HCCL_IF_BASE_PORT" or name not in os.environ}

    def setup(self, model: dict, parallel: dict, accelerator: str, address: tuple[str, int],
              timeout_s: float) -> str:
        """Join the replica's group (rank 0's store at `address`) and load the parallel pipeline on this rank;
        -> this rank's node id (the driver tells a lost node from a failed sample by it)."""
        import torch.distributed as dist

        from echovideo.checkpoint_cache import loaded_weights
        from echovideo.checkpoint_identity import check_pinned
        from echovideo.locations import shown_location
        from echovideo.presets.tiny import tiny_checkpoint
        from parallel import ParallelConfig
        from parallel.launch import init_group, local_device
        from parallel.pipeline import ParallelEchoVideoPipeline

        self._enter("reading the checkpoint")
        kind = DEVICE_KIND[accelerator]
        os.environ.update(self.group_environment(accelerator))
        device = local_device(kind, 0)  # Ray sets CUDA_/ASCEND_RT_VISIBLE_DEVICES: the actor's device is 0
        timeout = timedelta(seconds=timeout_s)
        # Before joining the group: transformers' save_pretrained writes weights only on distributed rank 0.
        if model["checkpoint"]:  # the weights the job's ids name, or this replica fails the job (never renders others)
            root, weights = loaded_weights(model["checkpoint"])
            check_pinned(weights, model.get("pinned"), shown_location(model["checkpoint"]))
        else:
            root = tiny_checkpoint()
        self._enter("forming the group")
        store = self.store or dist.TCPStore(address[0], address[1], self.world, is_master=False, timeout=timeout)
        init_group(kind, self.rank, self.world, store=store, timeout=timeout)
        self._enter("loading the model")
        config = ParallelConfig(ulysses=parallel["ulysses"], ring=parallel["ring"], cfg=parallel["cfg"])
        self.pipe = ParallelEchoVideoPipeline.from_pretrained(root, config, device=str(device), dtype=model["dtype"],
                                                              scheduler=model["scheduler"], timeout=timeout,
                                                              compile=model["compile"])
        self._enter("ready")
        given = {kind: ids for kind, ids in ray.get_runtime_context().get_accelerator_ids().items() if ids}
        self.log.info("rank %d/%d ready on %s%s, group at %s:%d, %s", self.rank, self.world, device,
                      f" ({given})" if given else "", *address, root)
        return ray.get_runtime_context().get_node_id()

    def render(self, sample_id: str, prompt: str, image: bytes | None, options: dict, files: dict[str, str],
               scores: bool = True, about: dict | None = None) -> dict:
        """Every rank calls this with the same sample (only rank 0 gets the image, `files`: where the video,
        its poster, the photo and its thumbnail go, and `about`: what the clip's json says of its identity).
        Rank 0 returns timings and the clip's quality scores, computed on the frames it holds (`scores=False`:
        none).

        Any failure is raised as a SampleFailure: classified here, where the real exception is known.
        """
        started = time.monotonic()
        self._progressed()
        self.log.info("sample %s: started (%d steps)", sample_id, options["steps"])
        try:
            result = self.pipe(prompt, image, GenerationOptions(**options), on_step=self._progressed, scores=scores)
            self._progressed()
            clip_scores = result.scores.as_dict() if result.scores else None
            if self.rank == 0:
                record = {"sample_id": sample_id, "prompt": prompt, **(about or {}), "options": options,
                          "scores": clip_scores}
                video_sha256 = self._deliver(result.frames, result.fps, image, files, record)
        except Exception as exc:
            failure = classify(exc)
            self.log.error("sample %s: failed (%s): %s: %s", sample_id, failure.kind.value, type(exc).__name__, exc,
                           exc_info=failure.kind is not Kind.INPUT)
            self.upload_log()
            raise SampleFailure.of(self._explained(failure, options)) from None
        finally:
            self._progressed()
        seconds = time.monotonic() - started
        self.log.info("sample %s: done in %.2f s", sample_id, seconds)
        if time.monotonic() - self.log_uploaded_at > LOG_UPLOAD_EVERY_S:
            self.upload_log()
        if self.rank != 0:
            return {}
        return {"seconds": seconds, "frames": int(result.frames.shape[0]),
                "scores": clip_scores, "video_sha256": video_sha256}

    def _deliver(self, frames: np.ndarray, fps: int, image: bytes, files: dict[str, str], record: dict) -> str:
        """The identity photo as given (first: the clip's json names it), then the clip, checked before anyone
        can see it (it decodes, every frame is there), its json, poster and the photo's thumbnail: each in place
        whole under its name in the output, or not at all. -> the clip's sha256 (exports reuse by content)."""
        if not self.destination.exists(files["photo"]):  # once per photo: it is named by its hash
            with self.destination.output(files["photo"], Path(files["photo"]).suffix) as local:
                local.write_bytes(image)
        with self.destination.output(files["video"], ".mp4") as local:
            write_mp4(frames, local, fps=fps)
            check_mp4(local, len(frames))
            video_sha256 = file_sha256(local)
        with self.destination.output(files["record"], ".json") as local:
            local.write_text(json.dumps({"video": Path(files["video"]).name, **record}, indent=1))
        with self.destination.output(files["poster"], ".jpg") as local:
            _save_jpeg(frames[len(frames) // 2], local)
        if not self.destination.exists(files["thumbnail"]):  # once per photo: it is named by the photo's hash
            with self.destination.output(files["thumbnail"], ".jpg") as local:
                _save_jpeg(_thumbnail(image), local)
        return video_sha256

    @ray.method(concurrency_group=PROBES)
    def upload_log(self) -> None:
        """An object-store output gets this rank's log file whole (a local or shared folder has it already).
        Best effort: a log that cannot be uploaded must not fail a sample."""
        if not (self.log_file and self.destination.remote):
            return
        self.log_uploaded_at = time.monotonic()
        try:
            self.destination.put(f"logs/{self.log_name}", Path(self.log_file).read_bytes())
        except OSError as exc:
            self.log.warning("could not upload this log: %s", str(exc)[:200])

    def _explained(self, failure: Failure, options: dict) -> Failure:
        """Out of memory names the sample's size and the way out."""
        if failure.kind is not Kind.OUT_OF_MEMORY:
            return failure
        size = f"{options['width']}x{options['height']}, {options['frames']} frames"
        return Failure(failure.kind, f"out of memory on rank {self.rank} of {self.world} rendering {size} "
                                     f"({failure.message}); lower height/width/frames, or give each replica more "
                                     "ranks (parallel.ulysses/ring) or a larger device", failure.secondary)


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` on this machine (None if none does)."""
    import psutil  # a Ray dependency

    return next((name for name, addresses in psutil.net_if_addrs().items()
                 if any(a.address.split("%", 1)[0] == address for a in addresses)), None)


def _log_file(destination: Destination | None, name: str | None) -> str | None:
    """In the output's logs/ folder, or on this node's disk when the output is an object store."""
    if destination is None or name is None:
        return None
    if destination.remote:
        return str(Path(tempfile.mkdtemp(prefix="echovideo-rank-log-")) / name)
    return destination.path(f"logs/{name}")


def _rank_log(path: str) -> logging.Logger:
    """This rank's log file in the job's output (`logs/replica-R-rank-K.log`), with the model's warnings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray_jobs", "echovideo", "parallel"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return logging.getLogger("ray_jobs.runtime.worker")


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    """A poster (the clip's middle frame, shown before it plays) or a thumbnail, as a JPEG."""
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)


def _thumbnail(image: bytes) -> np.ndarray:
    """The identity photo, small: the gallery shows it on every card."""
    pixels = decode_identity_image(image, "identity")
    scale = THUMBNAIL_SIDE / max(pixels.shape[:2])
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
