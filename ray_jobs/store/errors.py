"""The errors that stop a job (as opposed to failing one sample): raised by the store, the runtime and the CLI's
callers alike, so they sit at the store's level, below the runtime that stops on them."""


class JobFailure(RuntimeError):
    """The job cannot go on (no replica can be built or kept)."""


class OutputError(JobFailure):
    """The output folder cannot be written (disk full, read-only, gone): stop cleanly instead of failing samples."""
