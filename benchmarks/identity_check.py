"""What the driver pays per new identity photo: the full decode it did before issue 14 against the header and
structure check it does now, on a large phone-sized JPEG and a 13000x13000 PNG.

Each variant runs in a fresh process (peak RSS is per process) and prints time and peak memory, and the
ratio old/new. Prediction: the header check is over 100x faster and adds almost nothing to the driver's
memory, where the decode of the 13000x13000 PNG adds over 1 GB (RGB array, its numpy copy, the resize).

    python benchmarks/identity_check.py            (--smoke: a 6000x6000 PNG and a 2016x1512 JPEG)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHILD = r'''
import json, resource, sys, time
from echovideo.images import check_identity_header, decode_identity_image
data = open(sys.argv[2], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
(decode_identity_image if sys.argv[1] == "decode" else check_identity_header)(data, "photo", "identity")
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "added_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
'''


def measure(variant: str, photo: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, variant, str(photo)], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout)


def main() -> None:
    smoke = "--smoke" in sys.argv
    jpeg, png = ((2016, 1512), (6000, 6000)) if smoke else ((4032, 3024), (13000, 13000))
    with tempfile.TemporaryDirectory() as folder:
        photos = {f"jpeg {jpeg[0]}x{jpeg[1]}": Path(folder) / "phone.jpg",
                  f"png {png[0]}x{png[1]}": Path(folder) / "huge.png"}
        Image.effect_noise(jpeg, 64).convert("RGB").save(photos[f"jpeg {jpeg[0]}x{jpeg[1]}"], quality=90)
        Image.new("1", png).save(photos[f"png {png[0]}x{png[1]}"])
        for name, photo in photos.items():
            old, new = measure("decode", photo), measure("header", photo)
            print(f"{name}: decode {old['seconds'] * 1e3:.1f} ms +{old['added_mb']:.0f} MB; header "
                  f"{new['seconds'] * 1e3:.2f} ms +{new['added_mb']:.0f} MB; time ratio "
                  f"{old['seconds'] / new['seconds']:.0f}x")
    print(f"headline: driver cost per new photo ({name}): header check {old['seconds'] / new['seconds']:.0f}x "
          f"faster than a decode, +{new['added_mb']:.0f} MB vs +{old['added_mb']:.0f} MB")


if __name__ == "__main__":
    main()
