"""Create-only writes: put a file only if its name is free, the store itself deciding (a compare-and-set).

The job ledger (`ledger.py`) is built on this one primitive, so that two drivers can never both append the
same entry, whatever pauses or races between them:
- an S3 store (AWS S3, SeaweedFS 4.x; checked with a two-writer test in tests/test_ledger.py): PutObject with
  `If-None-Match: *`, 412 when the key exists. pyarrow cannot send that header, so this uses boto3;
- a local disk (`file://` prefixes, NFS included): a temp file linked to its name, `link()` failing if the name
  exists (atomic on NFS, unlike O_EXCL on old clients).
Other pyarrow filesystems (gs://, hdfs://) have no create-only write through a client we depend on: there a
write checks the name first, which is NOT a compare-and-set; the job warns once that two drivers racing on
one prefix are not excluded there.
"""

import logging
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ray_jobs.store.destination import Destination

logger = logging.getLogger("ray_jobs")


class CreateOnly:
    """`create(relative, data) -> bool`: True if this call made the file, False if the name was taken."""

    fenced = True

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    def create(self, relative: str, data: bytes) -> bool:
        raise NotImplementedError


class LocalCreateOnly(CreateOnly):
    def create(self, relative: str, data: bytes) -> bool:
        final = Path(self.destination.path(relative))
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.link-tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp, final)
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)


class S3CreateOnly(CreateOnly):
    def __init__(self, destination: Destination) -> None:
        super().__init__(destination)
        import boto3
        from botocore.config import Config

        parts = urlsplit(destination.location)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        self.bucket = parts.hostname
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=query.get("region"),
            aws_access_key_id=unquote(parts.username or "") or None,
            aws_secret_access_key=unquote(parts.password or "") or None,
            config=Config(retries={"mode": "standard"}))

    def create(self, relative: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        key = self.destination.path(relative).split("/", 1)[1]  # the root is "bucket/prefix"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):  # taken (409: a concurrent conditional put of the same key in flight)
                return False
            raise OSError(f"{exc.response.get('Error', {}).get('Code', 'error')} from the store") from None


class CheckedCreate(CreateOnly):
    """No create-only write on this filesystem: the name is checked, then written (not a compare-and-set)."""

    fenced = False

    def create(self, relative: str, data: bytes) -> bool:
        if self.destination.exists(relative):
            return False
        self.destination.put(relative, data)
        return True


def create_only(destination: Destination) -> CreateOnly:
    if destination.local_disk:
        return LocalCreateOnly(destination)
    if destination.location.startswith("s3://"):
        return S3CreateOnly(destination)
    logger.warning("%s: this store offers no create-only write to our clients; two jobs started on this prefix at "
                   "once are not excluded (use an s3:// or local output for that guarantee)", destination.name)
    return CheckedCreate(destination)
