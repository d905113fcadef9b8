"""User-facing errors: each names the offending field and how to fix it.

The CLI turns these into a one-line message and exit code 2; anything else is a bug.
"""


class EchoVideoInputError(ValueError):
    """Bad user input (an option, an image, a prompt)."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)

    def __reduce__(self):
        """Rebuilt from its three fields, so it survives pickling (Ray, multiprocessing) as itself."""
        return type(self), (self.field, self.problem, self.fix)


class CheckpointError(EchoVideoInputError):
    """A checkpoint folder that is missing a part or holds the wrong tensors."""


class NoFaceFoundError(EchoVideoInputError):
    """The identity photo holds no detectable face."""


class ParallelGroupError(RuntimeError):
    """A parallel group cannot go on: a peer rank died, stopped answering past the timeout, or failed."""


class PeerFailedError(RuntimeError):
    """Another rank of the group failed this sample before it started here (the group itself is intact)."""
