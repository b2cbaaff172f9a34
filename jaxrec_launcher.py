"""The entry point of the ``jaxrec`` command: SIGINT and SIGTERM are handled from its first instruction.

Importing the library takes seconds (JAX, XLA, orbax); a signal in that time ends the process at once with one line
and the status ``128 + signal``, instead of a traceback (or nothing, when the interrupt lands in a garbage-collection
callback that swallows it). The command then installs its own handlers (:func:`jaxrec.cli.main`).
"""

import contextlib
import os
import signal
import sys


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe, or a signal inside a print: leave all the same
            stream.flush()


def _exit_at_once(signum, frame):
    _flush()
    os.write(2, f"jaxrec: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def main() -> int:
    """Run the ``jaxrec`` command with signals handled throughout; returns its exit status."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_at_once)
    from jaxrec.cli import main as command

    code = command(own_process=True)
    if code >= 128:  # stopped by a signal, its checkpoint saved: leave without a teardown that XLA's threads can crash
        _flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
