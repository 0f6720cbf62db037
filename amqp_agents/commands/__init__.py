"""The commands of ``amqp-agents``, one module per group; :mod:`amqp_agents.cli` assembles them.

    options     argument types and the broker options every command shares
    messages    demo, send: talk to a broker from the shell
    history     history (bounded scans), history index (PostgreSQL)
    topology    topology plan|apply|graph|delete, run: commands on a configuration
    routes      routes explain: evaluate a configuration's routes, no broker needed

Each module has ``add_parsers(subparsers)``; a command is an ``async`` function of the
parsed arguments that returns the exit status. Only these modules and the CLI print.
"""
