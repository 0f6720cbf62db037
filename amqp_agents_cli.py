"""The ``amqp-agents`` console script: a Ctrl-C while the library loads ends quietly.

It lives outside the ``amqp_agents`` package on purpose. Importing anything from the
package first runs its ``__init__``, which loads aio-pika and pydantic (about 0.4 s);
a Ctrl-C in that time would print a ``KeyboardInterrupt`` traceback. Here nothing is
imported before SIGINT is taken. ``python -m amqp_agents`` takes it the same way
(``amqp_agents._interrupt``).
"""

import os
import signal
import sys
from types import FrameType


def exit_quietly(_signum: int, _frame: FrameType | None) -> None:
    """SIGINT while the library loads: end at once, with status 130.

    Not by raising ``KeyboardInterrupt`` there: raised while pydantic-core's compiled
    code calls back into Python (building a validator at import), it is printed as
    "Exception ignored" with a traceback, and lost: loading goes on.
    """
    os._exit(130)


def take_sigint() -> bool:
    """Route SIGINT to :func:`exit_quietly`, unless someone else set it (e.g. ignored
    in a background job); returns whether it did."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, exit_quietly)
    return True


def give_back_sigint() -> None:
    """Give SIGINT back to Python (``KeyboardInterrupt``) if :func:`take_sigint` took it."""
    if signal.getsignal(signal.SIGINT) is exit_quietly:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> int:
    """Load the command line and run it; Ctrl-C at any point exits 130, silently."""
    take_sigint()
    try:
        from amqp_agents.cli import main as run_command

        give_back_sigint()
        return run_command()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
