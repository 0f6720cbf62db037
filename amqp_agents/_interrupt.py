"""A Ctrl-C while ``python -m amqp_agents`` loads the package ends quietly (status 130).

runpy imports the package (its ``__init__`` loads aio-pika and pydantic, about 0.4 s)
before ``__main__`` runs, so nothing in ``__main__`` can catch an interrupt in that
time: Python would print a ``KeyboardInterrupt`` traceback. ``__init__`` imports this
module first. When the package is being loaded to run as ``-m amqp_agents``, and only
then (a library leaves SIGINT alone), SIGINT ends the process as the console script's
does while loading (``amqp_agents_cli.exit_quietly``), until ``__main__`` gives it back.
"""

from __future__ import annotations

import sys


def _loading_to_run_as_main() -> bool:
    # While runpy locates the module to run, sys.argv[0] is "-m"; orig_argv names it.
    argv = sys.orig_argv
    if sys.argv[:1] != ["-m"] or "-m" not in argv:
        return False
    return argv[argv.index("-m") + 1 :][:1] == ["amqp_agents"]


if _loading_to_run_as_main():
    # Imported only then: an import of the library never needs the console script.
    from amqp_agents_cli import take_sigint

    take_sigint()
