"""Job outputs in an object store against a local folder: the per-clip cost of the output path, and resume.

A real SeaweedFS on 127.0.0.1 (the tests' server) and the real driver, Ray replica and output code; the
model is left out so that what is measured is the output path alone: each rank-0 render delivers the
same tiny-preset clip (one real render, reused) as a job does, encoding the mp4, decoding it back to
check it, the poster, and then the driver's completion record.

1. Per clip: the job's render time (from the replica up to the end, manifest included) / N, to the store
   and to a local folder (same process, same frames); the difference is the upload path (temp key,
   server-side move, marker).
2. Resume: a rerun over the N finished clips; how long `resume_index` takes on each (the store lists
   videos/ and state/done/ and reads the fold `state/done.parquet` the last run wrote; also without the
   fold, reading every marker), and the whole rerun's wall time.

    python benchmarks/object_store_job.py            # 1,000 clips (several minutes on 2 cores)
    python benchmarks/object_store_job.py --smoke    # 10 clips
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import object_store as server  # noqa: E402  (the tests' real SeaweedFS)

from ray_jobs.data.job import parse_job  # noqa: E402
from ray_jobs.runtime.engine import JobDriver  # noqa: E402
from ray_jobs.runtime.worker import RankWorker  # noqa: E402
from ray_jobs.store import open_outputs  # noqa: E402
from ray_jobs.store.object_store import FOLDED  # noqa: E402

FACE = ROOT / "echovideo" / "assets" / "astronaut.jpg"
GENERATION = {"height": 64, "width": 96, "frames": 9, "steps": 2}


class DeliveringWorker(RankWorker):
    """A rank that loads no model and renders by delivering one fixed real clip (set as `frames`)."""

    frames = None

    def setup(self, *args) -> None:
        pass

    def render(self, sample_id: str, prompt: str, image, options: dict, files: dict, scores: bool = True,
               about: dict | None = None) -> dict:
        started = time.monotonic()
        self._deliver(self.frames, 8, image, files, {"sample_id": sample_id, **(about or {})})
        return {"seconds": time.monotonic() - started, "frames": len(self.frames)}


def job_spec(prompts: Path, output: str):
    return parse_job({"model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"ulysses": 1, "replicas": 1},
                      "resources": {"accelerator": "cpu", "cpus_per_rank": 1, "group_timeout_s": 120},
                      "dataset": {"prompts": str(prompts)}, "generation": GENERATION,
                      "job": {"output": output}}, "benchmark")


def real_clip():
    from echovideo.pipeline import EchoVideoPipeline
    from echovideo.presets.tiny import tiny_checkpoint
    from echovideo.sampling import GenerationOptions

    pipe = EchoVideoPipeline.from_pretrained(tiny_checkpoint(), device="cpu", dtype="fp32")
    return pipe("a person waves", FACE.read_bytes(), GenerationOptions(**GENERATION, seed=0)).frames


def run(prompts: Path, output: str, worker: type, clips: int) -> dict:
    spec = job_spec(prompts, output)
    store = open_outputs(spec.output)
    with store.locked():
        started = time.perf_counter()
        report = JobDriver(spec, progress=False, worker=worker).run()
        wall = time.perf_counter() - started
        render = report.summary["render_seconds"]
    index_s = resume_index_seconds(spec.output, clips)
    unfolded_s = None
    if store.destination.remote:
        folded = store.destination.read(FOLDED)
        store.destination.delete(FOLDED)
        unfolded_s = resume_index_seconds(spec.output, clips)
        store.destination.put(FOLDED, folded)
    return {"wall": wall, "render": render, "rendered": report.rendered, "index_s": index_s,
            "unfolded_s": unfolded_s}


def resume_index_seconds(output: str, clips: int) -> float:
    started = time.perf_counter()
    done, _ = open_outputs(output).resume_index()
    assert len(done) == clips, len(done)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="10 clips")
    parser.add_argument("--clips", type=int, default=1000)
    args = parser.parse_args()
    clips = 10 if args.smoke else args.clips
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ECHOVIDEO_CACHE"] = str(work / "cache")
        worker = type("Delivering", (DeliveringWorker,), {"frames": real_clip()})
        store = server.start(work / "seaweedfs")
        try:
            prompts = work / "prompts.jsonl"
            prompts.write_text("".join(json.dumps({"prompt": f"a person does thing {i}", "identity": str(FACE)})
                                       + "\n" for i in range(clips)))
            ray.init(address="local", num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False)
            results = {}
            for name, output in (("local folder", str(work / "out")), ("object store", store.uri("bench/out"))):
                first = run(prompts, output, worker, clips)
                again = run(prompts, output, worker, clips)
                assert first["rendered"] == clips and again["rendered"] == 0
                results[name] = (first, again)
                print(f"{name:>12}: {clips} clips rendered in {first['render']:.1f} s ({1000 * first['render'] / clips:.1f}"
                      f" ms a clip; job {first['wall']:.1f} s); resume index {1000 * first['index_s']:.0f} ms"
                      + (f" ({1000 * first['unfolded_s']:.0f} ms reading every marker)" if first["unfolded_s"] else "")
                      + "; "
                      f"rerun with nothing to do {again['wall']:.2f} s")
            size = os.path.getsize(next((work / "out" / "videos").iterdir()))
            local, remote = results["local folder"][0], results["object store"][0]
            extra_ms = 1000 * (remote["render"] - local["render"]) / clips
            print(f"clip: {GENERATION['width']}x{GENERATION['height']}, {GENERATION['frames']} frames, {size} bytes")
            print(f"headline: object store / local folder per clip {remote['render'] / local['render']:.2f}x "
                  f"(+{extra_ms:.1f} ms a clip); resume index over {clips} clips "
                  f"{1000 * remote['index_s']:.0f} ms vs {1000 * local['index_s']:.0f} ms")
        finally:
            ray.shutdown()
            server.stop(store)


if __name__ == "__main__":
    main()
