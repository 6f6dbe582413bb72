"""RPC round-trip benchmarks: hare_py against raw aiormq, aio-pika and FastStream.

``python -m bench`` (or ``make bench``) runs every contender against one
RabbitMQ node, client and echo server in separate processes, in interleaved
rounds, and writes a Markdown table and PNG plots into ``bench/results/``.
See docs/performance.md for what is measured and why.
"""
