"""SampleFeed: the dataset read, photos checked and ids computed on a thread of their own, a bounded queue ahead.

The driver's event loop must never wait on the dataset: reading a table chunk, decoding a new identity
photo (a few hundred ms for a phone photo) or skipping a million finished rows would otherwise hold up
every replica's events. The feed only ever touches the dataset; the loop takes what is ready.
"""

import queue
import threading
from collections.abc import Callable, Iterator

from ray_jobs.data.samples import Sample

END = object()


class SampleFeed:
    def __init__(self, samples: Iterator[Sample], done: dict[str, str | None], capacity: int,
                 follow_up: Callable[[Sample], Sample | None] | None = None) -> None:
        """`samples` in dataset order; those settled before (known by row key, or finished under their id for
        the same content: `done` maps id -> content key) are counted in `skipped`, repeats of an earlier row
        in `duplicates`; neither is queued, but a finished row's `follow_up` (the next attempt its quality
        chain needs on a rerun) is. `distinct_ids` collects every id the dataset asked for: the manifest of
        a completed walk lists exactly those (and their attempts)."""
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.done, self.skipped, self.duplicates, self.exhausted = done, 0, 0, False
        self.follow_up = follow_up
        self.distinct_ids: set[str] = set()
        self.walked = False  # every row was read (the feed was not stopped early)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(samples,), name="sample-feed", daemon=True)
        self.thread.start()

    def _fill(self, samples: Iterator[Sample]) -> None:
        try:
            for sample in samples:
                self.distinct_ids.add(sample.sample_id)
                if sample.duplicate:
                    self.duplicates += 1
                elif sample.settled or self._finished(sample):
                    self.skipped += 1
                    following = self.follow_up(sample) if self.follow_up and not sample.settled else None
                    if following is not None and not self._put(following):
                        return
                elif not self._put(sample):
                    return
        except BaseException as exc:  # re-raised in the driver by `take`
            self._put(exc)
            return
        self.walked = True
        self._put(END)

    def _finished(self, sample: Sample) -> bool:
        """Finished before under this id for this very content (a dataset's own id reused with other settings
        is rendered again; a record older than content keys is trusted by id)."""
        if sample.error or sample.sample_id not in self.done:
            return False
        return self.done[sample.sample_id] in (None, sample.content_key)

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
