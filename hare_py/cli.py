"""The ``hare-py`` command: call an RPC server, run an echo server, run the demo.

    hare-py call amqp://guest:guest@localhost/ --routing-key upper hello
    hare-py serve-echo amqp://guest:guest@localhost/ --queue upper
    hare-py demo

Rules this module keeps: a user error (bad option, bad URL, unreachable
broker, timeout, remote error) prints one line on stderr and exits with the
code documented in ``--help``, never a traceback; broker URLs are printed
only through ``BrokerURL.__str__``, which hides the password.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import structlog

from ._log import console_handler
from .actor.connection import Connection
from .codecs import JSON
from .conventions import amqp10 as amqp10_convention, nats as nats_convention
from .errors import (
    BrokerError,
    ConfigError,
    ConnectionLost,
    HareError,
    RemoteError,
    RequestTimeout,
    Unroutable,
)
from .rpc.client import RPCClient
from .rpc.server import RPCServer
from .transport.base import AMQP_0_9_1, NATS

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_UNROUTABLE",
    "EXIT_USAGE",
    "main",
    "run",
]

EXIT_OK = 0
EXIT_ERROR = 1  # any other failure (the broker refused an operation, ...)
EXIT_USAGE = 2  # bad options, URL or payload (argparse uses 2 too)
EXIT_TIMEOUT = 3
EXIT_UNROUTABLE = 4
EXIT_CONNECTION = 5
EXIT_REMOTE = 6

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  the reply was printed (serve-echo, demo: a clean stop)
  {EXIT_ERROR}  another failure (for example the broker refused an operation)
  {EXIT_USAGE}  bad usage: an unknown option, a malformed URL, invalid JSON
  {EXIT_TIMEOUT}  timeout: no reply before --timeout
  {EXIT_UNROUTABLE}  unroutable: no queue is bound for the routing key
  {EXIT_CONNECTION}  connection failure: the broker could not be reached, or went away
  {EXIT_REMOTE}  remote error: the server's handler raised (its type and message are printed)
"""

URL_HELP = (
    "broker URL: amqp://USER:PASSWORD@HOST:PORT/VHOST, amqps://... for TLS, "
    "amqp://HOST:PORT/?protocol=1.0 for AMQP 1.0 (add &listen=1 to serve-echo peer to "
    "peer), nats://[USER:PASSWORD@]HOST:PORT or tls://... for NATS, or sandbox://NAME "
    "(sandbox+nats://NAME) for hare_py's in-memory brokers (only reachable from the "
    "same process)"
)


class _Client(RPCClient[None]):
    """A client with the default callbacks: the caller gets the reply's payload."""


class _Echo(RPCServer[None]):
    """A server with the default callbacks: every request is answered with its payload."""


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (bad JSON, ...)."""


@dataclass
class Exit(Exception):
    """Ends the command with ``code`` after printing ``message`` on stderr."""

    code: int
    message: str


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``hare-py`` argument parser (its ``--help`` documents the exit codes)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="hare-py",
        description="Supervised RPC on message brokers, from the command line.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    common = _Parser(add_help=False)
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="log what hare_py does (connections, channels, failures) on stderr",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    call = commands.add_parser(
        "call",
        help="send one request and print the reply",
        description=(
            "Send PAYLOAD as one RPC request (published mandatory, with a reply queue\n"
            "and a correlation id) and print the reply on stdout; errors go to stderr."
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
        parents=[common],
    )
    call.add_argument("url", metavar="URL", help=URL_HELP)
    call.add_argument(
        "--exchange",
        default="",
        metavar="X",
        help="exchange to publish to (default: the default exchange, where the "
        "routing key is the server's queue name)",
    )
    call.add_argument(
        "--exchange-type",
        default="direct",
        choices=["direct", "topic", "fanout", "headers"],
        help="type the exchange is declared with, if it is named (default: direct)",
    )
    call.add_argument(
        "--routing-key",
        "-k",
        required=True,
        metavar="K",
        help="routing key of the request (on NATS the subject, on AMQP 1.0 the address)",
    )
    call.add_argument(
        "--json",
        action="store_true",
        help="PAYLOAD is a JSON value, sent as application/json; the reply is printed as JSON",
    )
    call.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the broker and the reply together (default: 5)",
    )
    call.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a message header to send (repeatable)",
    )
    call.add_argument("payload", metavar="PAYLOAD", help="the request body; - reads stdin")

    serve = commands.add_parser(
        "serve-echo",
        help="run an echo server until SIGINT or SIGTERM",
        description=(
            "Serve QUEUE, answering every request with its own payload, until SIGINT\n"
            "(Ctrl-C) or SIGTERM; then stop in order (requests not answered yet are\n"
            "redelivered by the broker). Logs go to stderr."
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
        parents=[common],
    )
    serve.add_argument("url", metavar="URL", help=URL_HELP)
    serve.add_argument(
        "--queue",
        "-q",
        required=True,
        metavar="Q",
        help="queue to declare and serve (on NATS the subject, on AMQP 1.0 the address)",
    )
    serve.add_argument(
        "--exchange",
        default="",
        metavar="X",
        help="exchange to bind the queue to (default: none, the default exchange)",
    )
    serve.add_argument(
        "--exchange-type",
        default="direct",
        choices=["direct", "topic", "fanout", "headers"],
        help="type the exchange is declared with (default: direct)",
    )
    serve.add_argument(
        "--routing-key",
        "-k",
        action="append",
        dest="routing_keys",
        metavar="K",
        help="binding key on --exchange (repeatable; default: the queue name)",
    )
    serve.add_argument(
        "--prefetch",
        type=int,
        default=32,
        metavar="N",
        help="requests handled at once (default: 32)",
    )

    demo = commands.add_parser(
        "demo",
        help="run the demo: a supervised client and server, a channel killed midway",
        description=(
            "Run a supervised client and server on the in-memory broker (or on --url),\n"
            "kill the client's channel midway and log the recovery."
        ),
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    demo.add_argument("--url", metavar="URL", help="run on this broker instead: " + URL_HELP)
    demo.add_argument(
        "--requests", type=int, default=20, metavar="N", help="requests to send (default: 20)"
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--header needs NAME=VALUE, got {item!r}")
        headers[name] = value
    return headers


def _payload(args: argparse.Namespace) -> Any:
    raw: str = sys.stdin.read() if args.payload == "-" else args.payload
    if not args.json:
        return raw.encode()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"PAYLOAD is not valid JSON ({exc})") from None


async def _connect(conn: Connection, deadline: float) -> None:
    """Wait for the first connection; fail fast if the first attempt fails."""
    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
        while not conn.is_connected:
            if conn.last_error is not None:
                break
            await anyio.sleep(0.01)
    if conn.is_connected:
        return
    where = ", ".join(map(str, conn.urls))  # str() hides the password
    if conn.last_error is not None:
        raise Exit(EXIT_CONNECTION, f"connection failure: {conn.last_error}")
    raise Exit(EXIT_CONNECTION, f"cannot connect to {where}: no answer within the timeout")


async def _declared(client: RPCClient[None], deadline: float) -> None:
    """Wait for the client's channel; a declaration the broker refuses (an exchange
    of another type: 406) is that error, not a timeout: the client would retry it."""
    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
        while not client.connected:
            if isinstance(client.last_error, BrokerError):
                raise client.last_error
            await anyio.sleep(0.005)


def _wire_options(conn: Connection, args: argparse.Namespace) -> dict[str, Any]:
    """The convention options for the URL's protocol: exchanges on AMQP 0-9-1; on NATS
    the routing key or ``--queue`` is the subject, on AMQP 1.0 the whole address
    (``--exchange`` has no meaning on either)."""
    if conn.wire_protocol == AMQP_0_9_1:
        return {"exchange": args.exchange, "exchange_type": args.exchange_type}
    if conn.wire_protocol == NATS:
        if args.exchange:
            raise UsageError(f"--exchange has no meaning on NATS ({conn.urls[0]}): subjects route")
        return {"convention": nats_convention("hare-py")}
    if args.exchange:
        raise UsageError(
            f"--exchange has no meaning on AMQP 1.0 ({conn.urls[0]}): the routing key or "
            "--queue is the whole address (/queue/NAME on RabbitMQ 3.x)"
        )
    return {"convention": amqp10_convention()}


async def _call(args: argparse.Namespace) -> int:
    payload = _payload(args)
    headers = _headers(args.header)
    deadline = anyio.current_time() + args.timeout
    async with Connection(args.url, name="hare-py call", connect_timeout=args.timeout) as conn:
        await _connect(conn, deadline)
        options = _wire_options(conn, args)
        async with _Client.start(
            conn, codec=JSON if args.json else None, max_restarts=0, **options
        ) as client:
            await _declared(client, deadline)
            left = max(0.001, deadline - anyio.current_time())
            reply = await client.request(payload, args.routing_key, timeout=left, headers=headers)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False))
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(reply + (b"" if reply.endswith(b"\n") else b"\n"))
        sys.stdout.buffer.flush()
    return EXIT_OK


async def _serve_echo(args: argparse.Namespace) -> int:
    if args.prefetch < 0:
        raise UsageError(f"--prefetch must be >= 0, got {args.prefetch}")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            Connection(args.url, name="hare-py serve-echo") as conn,
            _Echo.start(
                conn,
                queue=args.queue,
                routing_keys=args.routing_keys,
                prefetch=args.prefetch,
                **_wire_options(conn, args),
            ) as server,
        ):
            print(
                f"serving {args.queue!r} on {conn.urls[0]} (echo); Ctrl-C or SIGTERM stops",
                flush=True,
            )
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
                break
        print(f"stopped after {server.handled} requests", file=sys.stderr, flush=True)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    counts = await demo_main(requests=args.requests, url=args.url)
    return EXIT_OK if counts["ok"] and counts["reply_queues"] >= 2 else EXIT_ERROR


COMMANDS = {"call": _call, "serve-echo": _serve_echo, "demo": _demo}


def _exit_for(error: BaseException) -> Exit:
    """The exit code and one-line message for an error raised by a command."""
    if isinstance(error, Exit):
        return error
    if isinstance(error, UsageError | ConfigError):
        return Exit(EXIT_USAGE, f"error: {error}")
    if isinstance(error, RequestTimeout):
        return Exit(EXIT_TIMEOUT, f"timeout: {error}")
    if isinstance(error, Unroutable):
        return Exit(EXIT_UNROUTABLE, f"unroutable: {error}")
    if isinstance(error, RemoteError):
        return Exit(EXIT_REMOTE, f"remote error: {error}")
    if isinstance(error, ConnectionLost):
        return Exit(EXIT_CONNECTION, f"connection failure: {error}")
    if isinstance(error, HareError):
        return Exit(EXIT_ERROR, f"error: {error}")
    raise error


def _leaf(error: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, if there is just one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def run(argv: Sequence[str] | None = None) -> int:
    """Run ``hare-py`` with ``argv`` in the running event loop; returns the exit code.

    Usage errors detected by argparse exit with ``SystemExit(2)``, as argparse does.
    """
    args = build_parser().parse_args(argv)
    try:
        return await COMMANDS[args.command](args)
    except BaseException as raw:
        error = _leaf(raw)
        if not isinstance(error, Exception) or isinstance(raw, anyio.get_cancelled_exc_class()):
            raise
        try:
            result = _exit_for(error)
        except Exception:
            raise raw from None
        print(f"hare-py {args.command}: {result.message}", file=sys.stderr, flush=True)
        return result.code


@contextmanager
def _console_logging(argv: Sequence[str]) -> Iterator[None]:
    """Logs go to stderr (stdout is for replies): errors only for ``call`` unless
    ``--verbose``, info for the others. The previous configuration is restored."""
    quiet = bool(argv) and argv[0] == "call" and not {"-v", "--verbose"} & set(argv)
    level = logging.ERROR if quiet else logging.INFO
    hare = logging.getLogger("hare_py")  # hare_py logs through the stdlib
    handler = console_handler(sys.stderr, colors=sys.stderr.isatty())
    aiormq = logging.getLogger("aiormq")
    saved_levels = hare.level, aiormq.level
    hare.addHandler(handler)
    hare.setLevel(level)
    if quiet:
        aiormq.setLevel(logging.CRITICAL)  # its connect errors repeat ours, with less care
    try:
        yield
    finally:
        hare.removeHandler(handler)
        hare.setLevel(saved_levels[0])
        aiormq.setLevel(saved_levels[1])


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``hare-py --help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import configure_logging

        configure_logging()  # the demo's own format, on stdout: its logs are its output
        try:
            return anyio.run(run, argv)
        finally:
            structlog.reset_defaults()
    with _console_logging(argv):
        try:
            return anyio.run(run, argv)
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
