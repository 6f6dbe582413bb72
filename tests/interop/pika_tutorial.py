"""RabbitMQ's RPC tutorial (Python, pika), written the way the tutorial writes it.

``serve`` is the tutorial's ``rpc_server.py`` and ``FibonacciRpcClient`` its
``rpc_client.py`` (https://www.rabbitmq.com/tutorials/tutorial-six-python),
changed only where a test must:

- the broker URL and the queue (the tutorial's ``rpc_queue``) are parameters;
- the server prints `` [x] Awaiting RPC requests`` after ``basic_consume``
  (the tutorial prints it just before) and flushes, so a test can wait for it;
- the client's wait for its reply is bounded (the tutorial waits forever), and
  it keeps the reply's properties for the test to look at.

Run the server as ``python pika_tutorial.py URL QUEUE``; the tests start it in
a subprocess and end it with SIGTERM (the broker requeues whatever it had not
acked and drops its connection).
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import pika


def fib(n: int) -> int:
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def serve(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()

    channel.queue_declare(queue=queue)

    def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
        n = int(body)

        print(f" [.] fib({n})", flush=True)
        response = fib(n)

        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(response),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_request)

    print(" [x] Awaiting RPC requests", flush=True)
    channel.start_consuming()


class FibonacciRpcClient:
    def __init__(self, url: str, queue: str) -> None:
        self.queue = queue
        self.connection = pika.BlockingConnection(pika.URLParameters(url))

        self.channel = self.connection.channel()

        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue

        self.channel.basic_consume(
            queue=self.callback_queue, on_message_callback=self.on_response, auto_ack=True
        )

        self.response: bytes | None = None
        self.props: Any = None
        self.corr_id: str | None = None

    def on_response(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        if self.corr_id == props.correlation_id:
            self.response = body
            self.props = props

    def call(self, n: int, timeout: float = 10.0) -> int:
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=self.corr_id,
            ),
            body=str(n),
        )
        deadline = time.monotonic() + timeout
        while self.response is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to fib({n}) within {timeout} s")
            self.connection.process_data_events(time_limit=min(left, 0.2))
        return int(self.response)

    def close(self) -> None:
        self.connection.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
