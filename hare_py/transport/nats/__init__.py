"""NATS on anyio streams, for the ``nats://`` and ``tls://`` URLs.

``_protocol`` is the sans-I/O client core (bytes in, events out; calls in,
bytes out), with no sockets and no clock; the anyio driver that runs it is
built on top of it.
"""
