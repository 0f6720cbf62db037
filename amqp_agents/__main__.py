"""``python -m amqp_agents`` runs the command line; Ctrl-C at any point exits 130,
silently (while the package itself loads: :mod:`amqp_agents._interrupt`)."""

import sys

from amqp_agents_cli import give_back_sigint

try:
    from .cli import main

    give_back_sigint()
    status = main()
except KeyboardInterrupt:
    status = 130
sys.exit(status)
