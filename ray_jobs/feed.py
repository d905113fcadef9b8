"""SampleFeed: the dataset read, photos checked and ids computed on a thread of their own, a bounded queue ahead.

The driver's event loop must never wait on the dataset: reading a table chunk, decoding a new identity
photo (a few hundred ms for a phone photo) or skipping a million finished rows would otherwise hold up
every replica's events. The feed only ever touches the dataset; the loop takes what is ready.
"""

import queue
import threading
from collections.abc import Iterator

from ray_jobs.dataset import Sample

END = object()


class SampleFeed:
    def __init__(self, samples: Iterator[Sample], done: set[str], capacity: int) -> None:
        """`samples` in dataset order; those whose id is in `done` are counted in `skipped`, repeats of an
        earlier row in `duplicates`; neither is queued."""
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.done, self.skipped, self.duplicates, self.exhausted = done, 0, 0, False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(samples,), name="sample-feed", daemon=True)
        self.thread.start()

    def _fill(self, samples: Iterator[Sample]) -> None:
        try:
            for sample in samples:
                if sample.duplicate:
                    self.duplicates += 1
                elif sample.sample_id in self.done:
                    self.skipped += 1
                elif not self._put(sample):
                    return
        except BaseException as exc:  # re-raised in the driver by `take`
            self._put(exc)
            return
        self._put(END)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def take(self, timeout: float = 0.0) -> Sample | None:
        """The next sample, or None if none is ready within `timeout` (or the dataset is exhausted)."""
        if self.exhausted:
            return None
        try:
            item = self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait()
        except queue.Empty:
            return None
        if item is END:
            self.exhausted = True
            return None
        if isinstance(item, BaseException):
            self.exhausted = True
            raise item
        return item

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
