"""A load job for a client on python-qpid-proton's own reactor API (``proton.reactor``).

What a user of proton would write for RPC through RabbitMQ's AMQP 1.0 plugin: one
connection, a sender to the service address, a receiver on a fixed reply queue of its
own (RabbitMQ 3.x has no dynamic nodes), ``concurrency`` requests kept in flight by
correlation-id. It runs in the reactor (the worker's main thread), closed loop as the
other contenders' callers: each reply sends the next request. Figures as ``load``'s.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import AtMostOnce, Container


def _proton_url(url: str) -> tuple[str, dict[str, Any]]:
    """A hare_py AMQP URL as proton's ``Container.connect`` takes it."""
    base = url.split("?", 1)[0].rstrip("/")
    if "@" in base:
        return base, {"allowed_mechs": "PLAIN", "allow_insecure_mechs": True}
    return base, {"allowed_mechs": "ANONYMOUS"}


class _Load(MessagingHandler):
    def __init__(
        self, url: str, address: str, payload: bytes, concurrency: int, callers: Any
    ) -> None:
        super().__init__(prefetch=max(1000, 2 * concurrency))
        self.url, self.address, self.payload = url, address, payload
        self.concurrency, self.callers = concurrency, callers
        self.reply_to = f"/queue/bench-proton-reply-{uuid.uuid4().hex}"
        self.sent: dict[int, float] = {}  # correlation-id -> when sent
        self.next_id = 0
        self.ready = False
        self.stopping = False
        self.sender: Any = None
        self.connection: Any = None

    def on_start(self, event: Any) -> None:
        base, options = _proton_url(self.url)
        self.connection = event.container.connect(base, **options)
        self.sender = event.container.create_sender(self.connection, self.address)
        event.container.create_receiver(self.connection, self.reply_to, options=AtMostOnce())

    def on_link_opened(self, event: Any) -> None:
        if event.receiver is not None:  # replies can arrive: start calling
            self.ready = True
            self._fill()

    def on_sendable(self, event: Any) -> None:
        self._fill()

    def _fill(self) -> None:
        sender = self.sender
        while (
            self.ready
            and not self.stopping
            and len(self.sent) < self.concurrency
            and sender.credit > 0
        ):
            self.next_id += 1
            cid = self.next_id
            self.sent[cid] = time.perf_counter()
            request = Message(body=self.payload, inferred=True, correlation_id=cid)
            request.reply_to = self.reply_to
            sender.send(request)

    def on_message(self, event: Any) -> None:
        message = event.message
        began = self.sent.pop(message.correlation_id, None)
        if began is None:
            self.callers.errors.append(f"unknown correlation-id {message.correlation_id!r}")
            return
        callers = self.callers
        callers.served += 1
        if callers.measuring:
            callers.latencies.append(time.perf_counter() - began)
            if bytes(message.body) != self.payload:
                callers.errors.append(f"wrong reply: {bytes(message.body)!r:.60}")
        if self.stopping:
            if not self.sent:
                self.connection.close()
            return
        self._fill()


class _Clock(MessagingHandler):
    """Warm-up, then the measured window, on the reactor's timers."""

    def __init__(self, load: _Load, warmup: float, duration: float) -> None:
        super().__init__()
        self.load, self.warmup, self.duration = load, warmup, duration
        self.phase = "warmup"

    def on_timer_task(self, event: Any) -> None:
        callers = self.load.callers
        if self.phase == "warmup":
            callers.open_window()
            self.phase = "measure"
            event.container.schedule(self.duration, self)
            return
        callers.close_window()
        self.load.stopping = True  # calls in flight finish uncounted; then it closes
        if not self.load.sent:
            self.load.connection.close()


def load(job: dict[str, Any], callers: Any, payload: bytes) -> None:
    """Run the reactor until the measured window is over and every call is back."""
    handler = _Load(job["url"], f"/queue/{job['queue']}", payload, int(job["concurrency"]), callers)
    container = Container(handler)
    clock = _Clock(handler, float(job["warmup"]), float(job["duration"]))
    container.schedule(float(job["warmup"]), clock)
    container.run()
