"""`python -m max_whisper` and the `max-whisper` command."""

import sys

from .allocator import use_max_allocator


def run() -> None:
    """The command, on MAX's allocator (allocator.py): the restart happens before the command's
    modules are imported, so it costs a fresh interpreter and little else."""
    use_max_allocator()
    from .cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
