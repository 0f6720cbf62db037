"""Benchmark harness: amqp_agents vs. a raw aio-pika baseline.

Run with ``python -m bench`` (see ``bench/README.md``).
"""
