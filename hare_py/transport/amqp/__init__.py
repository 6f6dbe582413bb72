"""The sans-I/O AMQP 0-9-1 client core of the coming anyio-native backend (issue 8).

``_protocol.AMQPClientProtocol`` is a state machine fed bytes and producing
bytes, with no sockets and no event loop; the anyio backend will drive it. It is
not yet a backend: no URL scheme selects it (``hare_py.transport`` does not
register it).
"""
