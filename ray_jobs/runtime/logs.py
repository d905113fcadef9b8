"""The runtime's two logs: `logger` (warnings reach the console above the bar, and driver.log) and `run_log`
(the driver's own record of the run: driver.log only)."""

import logging

logger = logging.getLogger("ray_jobs")
run_log = logging.getLogger("ray_jobs.runtime.engine.run")
run_log.setLevel(logging.INFO)
run_log.propagate = False
