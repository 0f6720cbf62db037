"""The ``amqp-agents`` console script: a Ctrl-C while the library loads ends quietly.

It lives outside the ``amqp_agents`` package on purpose. Importing anything from the
package first runs its ``__init__``, which loads aio-pika and pydantic (about 0.4 s);
a Ctrl-C in that time would print a ``KeyboardInterrupt`` traceback. Here nothing is
imported before the interrupt is caught.
"""

import sys


def main() -> int:
    """Load the command line and run it; Ctrl-C at any point exits 130, silently."""
    try:
        from amqp_agents.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
