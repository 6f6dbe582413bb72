"""The AMQP 1.0 peers the tests run against, and foreign peers not written with hare_py.

- ``ProtonBroker`` starts qpid-proton's example broker
  (``/usr/share/proton/examples/python/broker.py``, from Debian's
  ``libqpid-proton11-dev-examples``; see ``.ci/install-proton-examples.sh``)
  with this interpreter (which has python-qpid-proton) on a free loopback
  port, and stops it by its pid.
- ``ForeignServer`` and ``foreign_call`` are an RPC server and client on
  python-qpid-proton's own reactor API (``proton.reactor.Container``), each
  in a thread of its own: what a user of another AMQP 1.0 library would
  write. They stop themselves after ``timeout`` seconds whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from processes import free_port
from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container
from rabbitmq import unavailable

__all__ = ["BROKER_SCRIPT", "ForeignServer", "ProtonBroker", "foreign_call", "free_port"]

BROKER_SCRIPT = Path("/usr/share/proton/examples/python/broker.py")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ProtonBroker:
    """qpid-proton's example broker on 127.0.0.1, private to the test run."""

    def __init__(self) -> None:
        if not BROKER_SCRIPT.is_file():
            unavailable(
                f"{BROKER_SCRIPT} is missing: run .ci/install-proton-examples.sh "
                "(libqpid-proton11-dev-examples)"
            )
        self.port = free_port()
        self._process = subprocess.Popen(
            [sys.executable, str(BROKER_SCRIPT), "-a", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                self.stop()
                unavailable(f"proton's example broker did not start: {err[-500:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.port}/?protocol=1.0"

    def stop(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()


def _proton_url(url: str) -> tuple[str, dict[str, Any]]:
    """A hare_py AMQP 1.0 URL as proton's Container.connect takes it."""
    base = url.split("?", 1)[0].rstrip("/")
    options: dict[str, Any] = {"allowed_mechs": "ANONYMOUS"}
    if "@" in base:
        options = {"allowed_mechs": "PLAIN", "allow_insecure_mechs": True}
    return base, options


class _Stopper(MessagingHandler):
    """Checks a flag and a deadline on a timer: the reactor cannot be stopped from outside."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.stop_flag = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.connection: Any = None

    def on_timer_task(self, event: Any) -> None:
        if self.stop_flag.is_set() or time.monotonic() > self.deadline:
            if self.connection is not None:
                self.connection.close()
            acceptor = getattr(self, "acceptor", None)
            if acceptor is not None:
                acceptor.close()
            event.container.stop()
            return
        event.container.schedule(0.05, self)


class _ServerHandler(_Stopper):
    def __init__(self, url: str, address: str, timeout: float, listen: str | None) -> None:
        super().__init__(timeout)
        self.listen = listen
        self.acceptor: Any = None
        self.url = url
        self.address = address
        self.senders: dict[str, Any] = {}
        self.ready = threading.Event()
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        event.container.schedule(0.05, self)
        if self.listen is not None:
            self.acceptor = event.container.listen(self.listen)
            self.ready.set()
            return
        base, options = _proton_url(self.url)
        self.connection = event.container.connect(base, **options)
        event.container.create_receiver(self.connection, self.address)

    def on_link_opening(self, event: Any) -> None:
        # Listening: the peer's receiver is our route for its address (a dynamic one
        # gets a new address); its sender to our address is accepted as it is.
        link = event.link
        if self.listen is None:
            return
        if link.is_sender:
            address = link.remote_source.address
            if link.remote_source.dynamic:
                address = f"foreign-reply-{uuid.uuid4()}"
            link.source.address = address
            self.senders[address] = link
        else:
            link.target.address = link.remote_target.address

    def on_link_opened(self, event: Any) -> None:
        if event.receiver is not None:
            self.ready.set()

    def on_message(self, event: Any) -> None:
        request = event.message
        self.seen.append(request.correlation_id)
        address = request.reply_to
        sender = self.senders.get(address)
        if sender is None:
            sender = self.senders[address] = event.container.create_sender(self.connection, address)
        reply = Message(
            body=b"foreign:" + bytes(request.body),
            inferred=True,
            correlation_id=request.correlation_id,
        )
        sender.send(reply)


class ForeignServer:
    """An RPC server on proton's reactor, in a thread: answers ``b"foreign:" + body``.

    With ``listen="127.0.0.1:PORT"`` it listens instead of dialling ``url`` (peer
    to peer), accepting the links its peers open, as proton's examples do."""

    def __init__(
        self, url: str, address: str, timeout: float = 30.0, *, listen: str | None = None
    ) -> None:
        self.handler = _ServerHandler(url, address, timeout, listen)
        self.thread = threading.Thread(target=Container(self.handler).run, daemon=True)

    def __enter__(self) -> ForeignServer:
        self.thread.start()
        if not self.handler.ready.wait(10):
            self.handler.stop_flag.set()
            raise RuntimeError("the foreign server did not attach its receiver")
        return self

    def __exit__(self, *exc: object) -> None:
        self.handler.stop_flag.set()
        self.thread.join(10)


class _ClientHandler(_Stopper):
    def __init__(
        self, url: str, address: str, requests: list[tuple[Any, bytes]], reply: str | None
    ) -> None:
        super().__init__(20.0)
        self.url = url
        self.address = address
        self.requests = requests
        self.reply = reply
        self.replies: dict[Any, tuple[bytes, str | None]] = {}
        self.receiver: Any = None

    def on_start(self, event: Any) -> None:
        base, options = _proton_url(self.url)
        self.connection = event.container.connect(base, **options)
        if self.reply is None:
            self.receiver = event.container.create_receiver(self.connection, None, dynamic=True)
        else:
            self.receiver = event.container.create_receiver(self.connection, self.reply)
        event.container.schedule(0.05, self)

    def on_link_opened(self, event: Any) -> None:
        if event.receiver is None or event.receiver != self.receiver:
            return
        reply_to = event.receiver.remote_source.address
        sender = event.container.create_sender(self.connection, self.address)
        for correlation, body in self.requests:
            sender.send(
                Message(body=body, inferred=True, correlation_id=correlation, reply_to=reply_to)
            )

    def on_message(self, event: Any) -> None:
        message = event.message
        content_type = message.content_type
        cid = message.correlation_id
        if isinstance(cid, memoryview):  # proton hands binary ids out as memoryviews
            cid = bytes(cid)
        self.replies[cid] = (
            bytes(message.body),
            None if content_type is None or str(content_type) == "None" else str(content_type),
        )
        if len(self.replies) == len(self.requests):
            self.stop_flag.set()


def foreign_call(
    url: str, address: str, requests: list[tuple[Any, bytes]], *, reply: str | None = None
) -> dict[Any, tuple[bytes, str | None]]:
    """Send ``requests`` (correlation-id, body) from proton's reactor, blocking; returns
    {correlation-id: (body, content type)} as they came back (run it in a thread)."""
    handler = _ClientHandler(url, address, requests, reply)
    Container(handler).run()
    return handler.replies


@contextlib.contextmanager
def proton_broker() -> Iterator[ProtonBroker]:
    broker = ProtonBroker()
    try:
        yield broker
    finally:
        broker.stop()
