"""quick_init builds the same objects as the dataclass ``__init__`` it replaces."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from hare_py._frozen import quick_init
from hare_py.actor.results import NoReply, Reply
from hare_py.conventions.base import Incoming, IncomingReply
from hare_py.rpc.messages import Forward, Request, Response
from hare_py.transport.base import Delivery, LinkProperties, Properties
from hare_py.transport.nats._protocol import MsgReceived


def _sample(slots: bool = True) -> type[Any]:
    class Sample:
        a: int
        b: dict[str, int] = field(default_factory=dict)
        c: str | None = None
        d: int = field(default=3, kw_only=True)

    return dataclass(frozen=True, slots=slots)(Sample)


@pytest.mark.parametrize("slots", [True, False], ids=["slots", "dict"])
def test_same_objects_as_the_dataclass_init(slots: bool) -> None:
    plain, quick = _sample(slots), quick_init(_sample(slots))
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((1, {"k": 2}, "c"), {"d": 5}),
        ((), {"a": 1, "c": "x"}),
    ]
    for args, kwargs in cases:
        want, got = plain(*args, **kwargs), quick(*args, **kwargs)
        assert dataclasses.asdict(got) == dataclasses.asdict(want)
    assert quick(1).b is not quick(1).b  # a fresh default per instance, as default_factory
    with pytest.raises(TypeError):
        quick(1, {}, None, 4)  # d is keyword-only
    with pytest.raises(TypeError):
        quick()  # a is required
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick(1).a = 2


def test_without_slots_only_the_fields_not_at_their_default_are_stored() -> None:
    quick = quick_init(_sample(slots=False))
    assert quick(1).__dict__ == {"a": 1, "b": {}}  # b's factory runs: each gets its own
    assert quick(1, c="x", d=3).__dict__ == {"a": 1, "b": {}, "c": "x"}
    assert quick(1, d=4).d == 4 and quick(1).d == 3 and quick(1).c is None


def test_refuses_what_it_cannot_copy() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Checked):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


@pytest.mark.parametrize(
    "cls",
    [
        Properties,
        LinkProperties,
        Delivery,
        Request,
        Response,
        Forward,
        Reply,
        NoReply,
        IncomingReply,
        Incoming,
        MsgReceived,
    ],
)
def test_signature_of_the_library_classes(cls: type[Any]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default is f.default
        elif f.default_factory is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty
    # every slot set from its argument: repr reads them all
    assert repr(cls(**{f.name: None for f in fields})).count("=None") == len(fields)
