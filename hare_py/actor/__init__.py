"""The OTP-like runtime: actors, supervisors and the supervised connection."""

from .actor import Actor as Actor
from .backoff import Backoff as Backoff
from .caller import Caller as Caller
from .connection import Connection as Connection
from .results import Ignore as Ignore, NoReply as NoReply, Reply as Reply, Stop as Stop
from .runner import ActorRunner as ActorRunner
from .supervisor import ChildSpec as ChildSpec, Supervisor as Supervisor

__all__ = [
    "Actor",
    "ActorRunner",
    "Backoff",
    "Caller",
    "ChildSpec",
    "Connection",
    "Ignore",
    "NoReply",
    "Reply",
    "Stop",
    "Supervisor",
]
