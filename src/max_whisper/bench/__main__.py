"""The bench's worker process: python -m max_whisper.bench SPEC.json OUT.json (see worker.py)."""

import sys

from .worker import worker_main

sys.exit(worker_main(sys.argv[1:]))
