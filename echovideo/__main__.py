"""`python -m echovideo ...` and `torchrun ... -m echovideo generate ...`."""

import sys

from echovideo.cli import main

sys.exit(main())
