"""The runtime's clock: seconds during which the driver was able to look."""

import time


class LookClock:
    """Seconds during which the driver was able to look: deadlines and stall clocks run on this.

    The loop ticks at least every LOOP_WAIT_S; a longer gap (the process was suspended, a slow disk held a
    journal write) counts as at most MAX_GAP_S, so no replica is torn down for time nobody watched it.
    """

    MAX_GAP_S = 2.0

    def __init__(self) -> None:
        self.last, self.looked = time.monotonic(), 0.0

    def tick(self) -> float:
        now = time.monotonic()
        self.looked += min(now - self.last, self.MAX_GAP_S)
        self.last = now
        return self.looked
