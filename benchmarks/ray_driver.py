"""The Ray job driver: scheduling efficiency over R replicas, overhead per sample, replica start-up, memory.

1. Efficiency: R = 1..8 one-rank replicas render N samples of known, uneven cost (a worker that sleeps the
   sample's cost and writes its file; the real driver, replicas, journal and manifest). Efficiency =
   (sum of costs / R) / wall time of the scheduling loop; 1.0 is a perfect pull-based schedule.
2. Overhead per sample: the same with zero-cost samples on one replica: wall / N (Ray round trip, journal
   fsync, sample building, bookkeeping).
3. Replica start-up: placement group + actors + gloo group + tiny model load for a u2 replica on CPU,
   against loading the same pipeline in this process (the reference).
4. Driver memory: streaming a 1,000,000-row prompt table through the sample iterator (ids, seeds, image
   bytes by reference, de-duplication): growth of the resident set.

    python benchmarks/ray_driver.py            # R = 1, 2, 4, 8; 1,000,000 rows (a few minutes on 2 cores)
    python benchmarks/ray_driver.py --smoke    # R = 1, 2, 6 short samples each; 5,000 rows
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

from ray_jobs.dataset import iter_samples  # noqa: E402
from ray_jobs.driver import JobDriver  # noqa: E402
from ray_jobs.job import parse_job  # noqa: E402
from ray_jobs.replica import Replica  # noqa: E402
from ray_jobs.worker import RankWorker  # noqa: E402

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"


def cost_of(sample_id: str, mean_s: float) -> float:
    """A known, uneven cost per sample (0.5x .. 1.5x the mean), fixed by the id."""
    return mean_s * (0.5 + int(sample_id[:8], 16) / 0xFFFFFFFF)


class SleepWorker(RankWorker):
    """A rank whose render costs exactly `cost_of(id)` seconds: the driver is measured, not the model."""

    mean_s = 0.0

    def setup(self, *args) -> None:
        return None

    def render(self, sample_id: str, prompt: str, image, options: dict, video: str, poster: str) -> dict:
        seconds = cost_of(sample_id, self.mean_s)
        time.sleep(seconds)
        Path(video).write_bytes(b"\0")
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
    wall = report.summary["render_seconds"]
    costs = sum(cost_of(s.sample_id, mean_s) for s in iter_samples(spec))
    return {"n": report.rendered, "wall": wall, "efficiency": costs / replicas / wall if mean_s else None}


def startup(work: Path, reference_s: float) -> str:
    spec = job_spec(write_prompts(work / "startup.jsonl", 1), work / "out-startup", 1, ulysses=2)
    started = time.perf_counter()
    replica = Replica(0, spec, "cpu")
    placed = time.perf_counter()
    replica.start()
    ready = time.perf_counter()
    replica.teardown()
    return (f"replica start-up (u2, tiny, CPU): place {placed - started:.2f} s + group and load "
            f"{ready - placed:.2f} s = {ready - started:.2f} s; in-process load {reference_s:.2f} s; "
            f"ratio {(ready - started) / reference_s:.2f}")


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
    for sample in iter_samples(spec):
        seen += 1
        if seen % 10_000 == 0:
            peak = max(peak, rss_mb())
    per_row_us = (time.perf_counter() - started) / max(seen, 1) * 1e6
    return before, max(peak, rss_mb()) - before, seen, per_row_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="R = 1, 2, 6 short samples each, 5,000 rows: seconds")
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
        print(f"{'R':>2} {'samples':>7} {'wall (s)':>8} {'ideal (s)':>9} {'efficiency':>10}")
        worst = 1.0
        for replicas in counts:
            result = scheduling(work, replicas, args.per_replica, args.mean_s)
            worst = min(worst, result["efficiency"])
            print(f"{replicas:>2} {result['n']:>7} {result['wall']:>8.2f} "
                  f"{result['efficiency'] * result['wall']:>9.2f} {result['efficiency']:>10.3f}")
        overhead = scheduling(work, 1, 20 if args.smoke else 200, 0.0)
        print(f"driver overhead per sample (zero-cost renders, 1 replica): {1000 * overhead['wall'] / overhead['n']:.1f} ms")
        print(startup(work, reference_s))
        ray.shutdown()
        before, growth, seen, per_row_us = memory(work, rows)
        print(f"driver memory streaming {rows:,} rows ({seen:,} samples, {per_row_us:.0f} us/row): "
              f"RSS {before:.0f} MB before, +{growth:.0f} MB peak growth")
    print(f"headline: worst scheduling efficiency over R = {', '.join(map(str, counts))}: {worst:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
