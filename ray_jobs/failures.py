"""Job-level failures: the job stops (exit 1), keeps what is finished, and resumes when rerun."""


class JobFailure(RuntimeError):
    """The job cannot go on (no replica can be built or kept)."""


class OutputError(JobFailure):
    """The output folder cannot be written (disk full, read-only, gone): stop cleanly instead of failing samples."""
