"""`python -m max_whisper`: the `max-whisper` command."""

import sys

from .cli import main

sys.exit(main())
