"""The Ray job driver: scheduling efficiency over R replicas, overhead per sample, replica start-up, resume, memory.

1. Efficiency: R = 1..8 one-rank replicas render N samples of known, uneven cost (a worker that sleeps the
   sample's cost and writes its file; the real driver, replicas, journal and manifest). Efficiency =
   sum of costs / replica-seconds up (each replica from when it was first ready to the end; replicas now
   come up concurrently, a little apart); 1.0 is a perfect pull-based schedule.
2. Overhead per sample: the same with zero-cost samples on one replica: wall / N (Ray round trip, journal
   fsync, sample building, bookkeeping).
3. Replica start-up: placement group + actors + gloo group + tiny model load for a u2 replica on CPU,
   against loading the same pipeline in this process (the reference); and the whole job's start-up with
   R replicas whose load takes a fixed LOAD_S (a stand-in for a checkpoint read, so the 2 cores here do not
   hide the schedule): the driver builds them all at once, so R x load should cost ~1 x load.
4. Resume: a rerun over N finished rows (journal with row keys, a video file each): the cost per finished
   row of reading the journal and skipping the row, against the earlier way (reading and decoding every
   finished row's photo to recompute its content id), measured here on distinct photos.
5. Driver memory: streaming a 1,000,000-row prompt table through the sample iterator (ids, seeds, image
   bytes by reference, de-duplication): growth of the resident set.

    python benchmarks/ray_driver.py            # R = 1, 2, 4, 8; 1,000,000 rows (several minutes on 2 cores)
    python benchmarks/ray_driver.py --smoke    # R = 1, 2 short samples each; 5,000 rows
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_jobs.data.identities import IdentityReader  # noqa: E402
from ray_jobs.data.job import parse_job  # noqa: E402
from ray_jobs.data.request_identity import id_basis, parse_request, request_key  # noqa: E402
from ray_jobs.data.samples import build_sample, iter_samples  # noqa: E402
from ray_jobs.runtime.engine import JobDriver  # noqa: E402
from ray_jobs.runtime.feed import SampleFeed  # noqa: E402
from ray_jobs.runtime.worker import RankWorker  # noqa: E402
from ray_jobs.store import LocalOutputs  # noqa: E402

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"


def cost_of(sample_id: str, mean_s: float) -> float:
    """A known, uneven cost per sample (0.5x .. 1.5x the mean), fixed by the id."""
    return mean_s * (0.5 + int(sample_id[:8], 16) / 0xFFFFFFFF)


class SleepWorker(RankWorker):
    """A rank whose load takes `load_s` and whose render costs exactly `cost_of(id)` seconds: the driver is
    measured, not the model."""

    mean_s = 0.0
    load_s = 0.0

    def setup(self, *args) -> None:
        time.sleep(self.load_s)

    def render(self, sample_id: str, prompt: str, image, options: dict, files: dict, scores: bool = True,
               about: dict | None = None) -> dict:
        seconds = cost_of(sample_id, self.mean_s)
        time.sleep(seconds)
        if files:
            Path(self.destination.path(files["video"])).write_bytes(b"\0")
        return {"seconds": seconds, "frames": 1}


def job_spec(prompts: Path, out: Path, replicas: int, ulysses: int = 1):
    return parse_job({"model": {"preset": "tiny", "dtype": "fp32"},
                      "parallel": {"ulysses": ulysses, "replicas": replicas},
                      "resources": {"accelerator": "cpu", "cpus_per_rank": 1, "group_timeout_s": 120},
                      "dataset": {"prompts": str(prompts)},
                      "generation": {"height": 32, "width": 32, "frames": 5, "steps": 2},
                      "job": {"output": str(out)}}, "benchmark")


def write_prompts(path: Path, rows: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"a person does thing {i}", "identity": str(FACE)}) + "\n"
                            for i in range(rows)))
    return path


def scheduling(work: Path, replicas: int, per_replica: int, mean_s: float) -> dict:
    prompts = write_prompts(work / f"prompts-{replicas}-{mean_s}.jsonl", replicas * per_replica)
    spec = job_spec(prompts, work / f"out-{replicas}-{mean_s}", replicas)
    worker = type("BenchWorker", (SleepWorker,), {"mean_s": mean_s})
    report = JobDriver(spec, progress=False, worker=worker).run()
    wall, available = report.summary["render_seconds"], report.summary["replica_seconds"]
    costs = sum(cost_of(s.sample_id, mean_s) for s in iter_samples(spec, "cpu"))
    # Replicas come up at slightly different times: efficiency is over the replica-seconds they were up.
    return {"n": report.rendered, "wall": wall, "work": costs, "up": available,
            "efficiency": costs / available if mean_s else None}


def startup(work: Path, reference_s: float) -> str:
    spec = job_spec(write_prompts(work / "startup.jsonl", 1), work / "out-startup", 1, ulysses=2)
    ready = JobDriver(spec, progress=False).run().summary["startup_seconds"]
    return (f"replica start-up (u2, tiny, CPU): placed, grouped and loaded in {ready:.2f} s; "
            f"in-process load {reference_s:.2f} s; ratio {ready / reference_s:.2f}")


def parallel_startup(work: Path, replicas: int, load_s: float) -> float:
    """Seconds from the first request until every replica of a job was ready (each one's load takes load_s)."""
    spec = job_spec(write_prompts(work / f"start-{replicas}.jsonl", replicas), work / f"out-start-{replicas}",
                    replicas)
    worker = type("LoadWorker", (SleepWorker,), {"load_s": load_s})
    return JobDriver(spec, progress=False, worker=worker).run().summary["startup_seconds"]


def resume_cost(work: Path, rows: int) -> tuple[float, float, float]:
    """(us per finished row now, ms per finished row the earlier way, driver RSS growth in MB while resuming)."""
    path = write_prompts(work / f"resume-{rows}.jsonl", rows)
    spec = job_spec(path, work / f"out-resume-{rows}", 1)
    store = LocalOutputs(spec.output)
    with open(store.state / "completed.jsonl", "w") as journal:  # as if every row had been rendered
        for sample in iter_samples(spec, "cpu"):
            journal.write(json.dumps({"sample_id": sample.sample_id, "row_key": sample.row_key}) + "\n")
            (store.folder / store.video_name(sample.sample_id)).touch()
    before = rss_mb()
    started = time.perf_counter()
    done, finished_rows = store.resume_index()
    feed = SampleFeed(iter_samples(spec, "cpu", finished_rows), done, capacity=16)
    assert feed.take(timeout=3600) is None and feed.skipped == rows  # every row skipped, none queued
    now_us = (time.perf_counter() - started) / rows * 1e6
    state_mb = rss_mb() - before
    photos = []  # the earlier way: every finished row's photo read and decoded for its content id
    for i in range(100):
        photo = work / f"photo-{i}.jpg"
        photo.write_bytes(FACE.read_bytes() + i.to_bytes(4, "big"))  # distinct files, same decode cost
        photos.append(str(photo))
    reader, basis = IdentityReader(), id_basis(spec, "cpu")
    started = time.perf_counter()
    for photo in photos:
        request = parse_request(spec, {"prompt": "a person smiles", "identity": photo}, spec.columns(), basis)
        build_sample(spec, request, photo, reader, request_key(request.description, reader.reference(photo)))
    earlier_ms = (time.perf_counter() - started) / len(photos) * 1e3
    return now_us, earlier_ms, state_mb


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(work: Path, rows: int) -> tuple[float, float, int, float]:
    """RSS growth while streaming `rows` rows; the table itself is a parquet file written in chunks."""
    path = work / "million.parquet"
    with pq.ParquetWriter(path, pa.schema([("prompt", pa.string()), ("identity", pa.string())])) as writer:
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            writer.write_table(pa.table({"prompt": [f"prompt {i} " + hashlib.md5(str(i).encode()).hexdigest()
                                                    for i in range(start, start + count)],
                                         "identity": [str(FACE)] * count}))
    spec = job_spec(path, work / "out-memory", 1)
    before, peak, seen, started = rss_mb(), 0.0, 0, time.perf_counter()
    for sample in iter_samples(spec, "cpu"):
        seen += 1
        if seen % 10_000 == 0:
            peak = max(peak, rss_mb())
    per_row_us = (time.perf_counter() - started) / max(seen, 1) * 1e6
    return before, max(peak, rss_mb()) - before, seen, per_row_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="R = 1, 2 short samples each, 5,000 rows: a minute or two")
    parser.add_argument("--per-replica", type=int, default=24, help="samples per replica")
    parser.add_argument("--mean-s", type=float, default=0.25, help="mean render time of a sample")
    args = parser.parse_args()
    counts, rows = ((1, 2), 5_000) if args.smoke else ((1, 2, 4, 8), 1_000_000)
    if args.smoke:
        args.per_replica, args.mean_s = 6, 0.05
    from echovideo.pipeline import EchoVideoPipeline
    from echovideo.presets.tiny import tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ECHOVIDEO_CACHE"] = str(work / "cache")
        root = tiny_checkpoint()
        started = time.perf_counter()
        EchoVideoPipeline.from_pretrained(root, device="cpu", dtype="fp32")
        reference_s = time.perf_counter() - started
        ray.init(address="local", num_cpus=max(counts) + 2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        print(f"{'R':>2} {'samples':>7} {'wall (s)':>8} {'work (s)':>8} {'up (s)':>8} {'efficiency':>10}")
        worst = 1.0
        for replicas in counts:
            result = scheduling(work, replicas, args.per_replica, args.mean_s)
            worst = min(worst, result["efficiency"])
            print(f"{replicas:>2} {result['n']:>7} {result['wall']:>8.2f} {result['work']:>8.2f} "
                  f"{result['up']:>8.2f} {result['efficiency']:>10.3f}")
        overhead = scheduling(work, 1, 20 if args.smoke else 200, 0.0)
        print(f"driver overhead per sample (zero-cost renders, 1 replica): {1000 * overhead['wall'] / overhead['n']:.1f} ms")
        print(startup(work, reference_s))
        load_s = 2.0 if args.smoke else 10.0
        one = parallel_startup(work, 1, load_s)
        for replicas in counts:
            seconds = one if replicas == 1 else parallel_startup(work, replicas, load_s)
            print(f"job start-up with {replicas} replica(s) whose load takes {load_s:.0f} s: {seconds:.1f} s, "
                  f"{seconds / one:.2f} x one replica's (built one after another: {replicas} x)")
        ray.shutdown()
        resume_rows = 5_000 if args.smoke else 1_000_000
        now_us, earlier_ms, state_mb = resume_cost(work, resume_rows)
        print(f"resume over {resume_rows:,} finished rows: {now_us:.1f} us per row (journal read, row key, skip); "
              f"earlier way {earlier_ms:.1f} ms per row (photo read and decoded), ratio {earlier_ms * 1e3 / now_us:.0f}; "
              f"driver RSS +{state_mb:.0f} MB while resuming")
        before, growth, seen, per_row_us = memory(work, rows)
        print(f"driver memory streaming {rows:,} rows ({seen:,} samples, {per_row_us:.0f} us/row): "
              f"RSS {before:.0f} MB before, +{growth:.0f} MB peak growth")
    print(f"headline: worst scheduling efficiency over R = {', '.join(map(str, counts))}: {worst:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
