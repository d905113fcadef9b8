"""Where a job's results live and who may write them: the one `Outputs` interface (a local folder or an
object-store prefix), the ledger and its leases, storage credentials handed over in-process, checkpoints
fetched once per node, and the output's gallery page.

May import: `echovideo`, `ray_jobs.data`, and Ray where a check or a fetch runs on each node (`access`,
`checkpoints`). Never the runtime or the tools.
"""

from echovideo.locations import is_uri
from ray_jobs.store.local import LocalOutputs
from ray_jobs.store.object_store import ObjectStoreOutputs
from ray_jobs.store.outputs import Outputs

__all__ = ["LocalOutputs", "ObjectStoreOutputs", "Outputs", "open_outputs"]


def open_outputs(location: str) -> Outputs:
    """A local folder, or an object-store prefix for a URI."""
    return ObjectStoreOutputs(location) if is_uri(location) else LocalOutputs(location)
