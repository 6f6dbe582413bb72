"""The hare_py demo: a supervised RPC client and server, a channel killed midway.

    make demo                                    # on the built-in in-memory broker
    HARE_URL=amqp://guest:guest@localhost/ make demo   # on RabbitMQ

The code lives in ``hare_py/demo.py`` so that an installed package can run it
too (``hare-py demo``); read it there. Watch the logs: after the client's
channel is killed, the client opens a new channel with a fresh reply queue
(``rpc.channel_opened connects=2``), calls ``handle_connected`` again, and
requests go on. A request caught in flight by the kill fails at once with
``ConnectionLost``; an idempotent one is resent.
"""

from __future__ import annotations

import sys

from hare_py.demo import configure_logging, main, run

__all__ = ["configure_logging", "main"]

if __name__ == "__main__":
    sys.exit(run())
