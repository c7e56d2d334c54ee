"""Every numeric argument of every native entry point refuses what it cannot
take with a ValueError or TypeError naming the argument (IndexError for a
packet index, as a list does): never an OverflowError, never a float
silently truncated to an int.

The entry points and their numeric parameters are read from _native.pyi
(test_native_stubs.py keeps it equal to the module), so a new one cannot be
forgotten: test_every_numeric_parameter_is_walked fails until CALLS below
says how to call it (or EXEMPT why not). The public wrappers of private
native functions (fastpacket.aio.scatter and broadcast_array over _scatter
and _broadcast_array) are listed in WRAPPERS.
"""

from __future__ import annotations

import ast
import asyncio
import math
import pathlib
import re
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fastpacket as fp
from fastpacket import _native, aio

STUB = pathlib.Path(fp.__file__).with_name("_native.pyi")

# Annotations (as the stub spells them) of numeric scalars and columns.
SCALAR_INT = {"int", "Optional[int]", "Union[str, int]"}
SCALAR_REAL = {"float", "Optional[float]", "MetricValue"}
COLUMN = {"IntColumn"}
# Header values for n packets: one int for all, or one per packet.
VALUES = {"Optional[IntValues]"}


def _numeric_params() -> List[Tuple[str, str, str]]:
    """(entry point, parameter, annotation) for every numeric parameter of a
    public function or method in the stub (properties' setters included)."""
    tree = ast.parse(STUB.read_text())
    out = []

    def walk(fn: ast.FunctionDef, where: str) -> None:
        args = fn.args
        for arg in args.posonlyargs + args.args + args.kwonlyargs:
            if arg.annotation is None or arg.arg in ("self", "cls"):
                continue
            text = ast.unparse(arg.annotation)
            if text in SCALAR_INT | SCALAR_REAL | COLUMN | VALUES:
                out.append((where, arg.arg, text))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            walk(node, node.name)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if item.name.startswith("_") and item.name not in ("__init__", "__getitem__"):
                    continue
                setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in item.decorator_list)
                walk(item, f"{node.name}.{item.name}" + (".setter" if setter else ""))
    return sorted(set(out) | set(WRAPPERS))


# Public functions outside the stub over private native ones, and their
# numeric parameters (they pass them through unchecked).
WRAPPERS = [("aio.scatter", "type", "Optional[int]"), ("aio.scatter", "player_ids", "Optional[IntValues]"),
            ("aio.broadcast_array", "type", "Optional[int]"),
            ("aio.broadcast_array", "player_ids", "Optional[IntValues]")]


# -- how to call each entry point with valid arguments, one of them replaced ---

def _batch(n: int = 3) -> fp.PacketBatch:
    return fp.PacketBatch.build([1] * n, [b"abc"] * n)


def _session() -> Any:
    loop = asyncio.new_event_loop()
    hub = _native.Hub(loop, aio.Options().check(), lambda s, b: None, None)
    session = aio.Session(hub)
    _SESSIONS.append((session, loop))
    return session


_SESSIONS: List[Tuple[Any, asyncio.AbstractEventLoop]] = []


@pytest.fixture(autouse=True)
def _close_loops():
    yield
    while _SESSIONS:
        _, loop = _SESSIONS.pop()
        loop.close()


def _metrics_file(**kw: Any) -> Any:
    buf = bytearray(_native.MetricsFile.file_bytes(4))
    return _native.MetricsFile.init_header(buf, kw.get("slots", 4))


def _set_next_seq(value: Any) -> None:
    fp.SendBuffer().next_seq = value


def _gauge() -> Any:
    return fp.Registry().gauge("g")


def _ring_with(n: int) -> fp.RingBuffer:
    ring = fp.RingBuffer(4096)
    ring.write(b"x" * n)
    return ring


def _group() -> Any:
    loop = asyncio.new_event_loop()
    hub = _native.Hub(loop, aio.Options().check(), lambda s, b: None, None)
    _SESSIONS.append((None, loop))
    return hub.group("g")


def _rows(n: int = 1) -> Any:
    return np.zeros((n, 4), dtype=np.uint8)


def _session_buffer_updated(nbytes: Any) -> None:
    s = _session()
    s.get_buffer(-1)  # lends the ring that buffer_updated commits into
    s.buffer_updated(nbytes)


CALLS: Dict[str, Callable[..., Any]] = {
    "HeaderLayout.__init__": lambda **kw: fp.HeaderLayout([("len", "u16"), ("type", "u16")], "len", **kw),
    "encode": lambda **kw: fp.encode(**{"type": 1, "payload": b"x", **kw}),
    "PacketBatch.build": lambda **kw: fp.PacketBatch.build(**{"types": [1], "payloads": [b"x"], **kw}),
    "PacketBatch.__getitem__": lambda index: _batch()[index],
    "PacketBatch.payload": lambda i: _batch().payload(i),
    "PacketBatch.over": lambda **kw: fp.PacketBatch.over(_batch().to_bytes(), **kw),
    "FrameDecoder.__init__": lambda **kw: fp.FrameDecoder(**{"aggregator": fp.Aggregator(), **kw}),
    "Aggregator.__init__": lambda **kw: fp.Aggregator(**kw),
    "Aggregator.pack": lambda **kw: fp.Aggregator().pack(_batch(), **kw),
    "Aggregator.unpack": lambda **kw: fp.Aggregator().unpack(fp.Aggregator().pack(_batch()), **kw),
    "Aggregator.pack_many": lambda **kw: fp.Aggregator().pack_many(_batch(), **kw),
    "RingBuffer.__init__": lambda **kw: fp.RingBuffer(**kw),
    "RingBuffer.commit": lambda n: fp.RingBuffer(4096).commit(n),
    "RingBuffer.consume": lambda n: _ring_with(10).consume(n),
    "RingBuffer.peek": lambda n: _ring_with(10).peek(n),
    "RingBuffer.read": lambda n: _ring_with(10).read(n),
    "SendBuffer.__init__": lambda **kw: fp.SendBuffer(**kw),
    "SendBuffer.next_seq.setter": lambda seq: _set_next_seq(seq),
    "SendBuffer.send": lambda **kw: fp.SendBuffer().send(**{"type": 1, "payload": b"x", **kw}),
    "SendBuffer.send_batch": lambda **kw: fp.SendBuffer().send_batch(_batch(), **kw),
    "SendBuffer.broadcast": lambda **kw: fp.SendBuffer().broadcast(**{"type": 1, "payload": b"x",
                                                                       "player_ids": [1, 2], **kw}),
    "SendBuffer.should_flush": lambda **kw: fp.SendBuffer().should_flush(**kw),
    "Metric.record": lambda value: fp.Registry().metric("m").record(value),
    "Metric.percentile": lambda p: fp.Registry().metric("m").percentile(p),
    "Counter.inc": lambda n: fp.Registry().counter("c").inc(n),
    "Gauge.set": lambda value: _gauge().set(value),
    "Gauge.inc": lambda n: _gauge().inc(n),
    "Gauge.dec": lambda n: _gauge().dec(n),
    "Timer.__init__": lambda ns_per_unit: _native.Timer(fp.Registry().metric("t"), ns_per_unit),
    "MetricsFile.file_bytes": lambda slots: _native.MetricsFile.file_bytes(slots),
    "MetricsFile.init_header": lambda slots: _metrics_file(slots=slots),
    "SessionBase.get_buffer": lambda size_hint: _session().get_buffer(size_hint),
    "SessionBase.buffer_updated": _session_buffer_updated,
    "SessionBase.send": lambda **kw: _session().send(**{"type": 1, "payload": b"x", **kw}),
    "SessionBase.broadcast": lambda **kw: _session().broadcast(**{"type": 1, "payload": b"x", **kw}),
    "SendBuffer.send_array": lambda **kw: fp.SendBuffer().send_array(**{"type": 1, "records": _rows(), **kw}),
    "SessionBase.send_array": lambda **kw: _session().send_array(**{"type": 1, "records": _rows(), **kw}),
    "scatter": lambda **kw: fp.sendbuf.scatter(**{"buffers": [fp.SendBuffer()], "type": 1, "records": _rows(),
                                                  **kw}),
    "aio.scatter": lambda **kw: aio.scatter(**{"sessions": [_session()], "type": 1, "records": _rows(), **kw}),
    "aio.broadcast_array": lambda **kw: aio.broadcast_array(**{"sessions": [_session()], "type": 1,
                                                               "records": _rows(), **kw}),
    "Group.send": lambda **kw: _group().send(**{"type": 1, "payload": b"x", **kw}),
    "Group.ready": lambda **kw: _group().ready(**kw),
}

# Numeric parameters not walked here, and why.
EXEMPT = {
    ("SessionBase.recv", "timeout"): "asyncio.wait_for's timeout, checked by asyncio",
    ("Hub.group", "name"): "a name, not a number: any str or int is one (anything else a TypeError, test_groups)",
    ("SessionBase.group", "name"): "as Hub.group",
}

# Parameters for which a negative value is valid (it counts from the end, or
# means "all"); their out-of-range probe is below the most negative ssize_t.
NEGATIVE_OK = {("PacketBatch.__getitem__", "index"), ("PacketBatch.payload", "i"), ("RingBuffer.peek", "n"),
               ("RingBuffer.read", "n"), ("SessionBase.get_buffer", "size_hint"),
               ("HeaderLayout.__init__", "length_adjustment")}
# Index parameters: out of range is an IndexError, as for a list.
INDEX = {("PacketBatch.__getitem__", "index"), ("PacketBatch.payload", "i")}
# Real parameters without bounds (every finite and infinite value is valid, NaN is not).
UNBOUNDED_REAL = {("Gauge.set", "value"), ("Gauge.inc", "n"), ("Gauge.dec", "n")}
# Real parameters >= 0 without an upper bound (a timeout: inf waits as long as it takes).
NO_UPPER_REAL = {("Group.ready", "timeout")}


def _bad_values(where: str, name: str, annotation: str) -> List[Tuple[Any, type]]:
    """(value, expected exception class) probes for one parameter."""
    key = (where, name)
    if annotation in COLUMN:
        return [([3.99], TypeError), (["7"], TypeError), ([-1], ValueError), ([2**64], (ValueError, TypeError))]
    if annotation in VALUES:  # the one-packet calls above: a scalar, or a column of one
        return [(3.99, TypeError), ("7", TypeError), (-1, ValueError), (2**64, ValueError),
                ([3.99], TypeError), ([-1], ValueError), ([2**64], (ValueError, TypeError))]
    if annotation == "MetricValue":  # ints and floats both valid (a float is rounded), see Metric.record
        return [(-1, ValueError), (2**64, ValueError), (math.nan, ValueError), ("7", TypeError)]
    if annotation in SCALAR_REAL:
        out = [("7", TypeError), (math.nan, ValueError)]
        if key not in UNBOUNDED_REAL:
            out += [(-1, ValueError)] + ([] if key in NO_UPPER_REAL else [(2**64, ValueError)])
        return out
    out_of_range = IndexError if key in INDEX else ValueError
    out = [(3.99, TypeError), ("7", TypeError), (2**64, out_of_range)]
    out.append((-(2**63) - 1, out_of_range) if key in NEGATIVE_OK else (-1, out_of_range))
    if annotation == "Union[str, int]":  # codec: a number or a name, anything else a ValueError
        out = [(v, ValueError) for v, _ in out if not isinstance(v, str)]
    return out


def _call(where: str, name: str, value: Any) -> Any:
    fn = CALLS[where]
    positional_only = where in ("PacketBatch.__getitem__", "PacketBatch.payload", "RingBuffer.commit",
                                "RingBuffer.consume", "RingBuffer.peek", "RingBuffer.read",
                                "SendBuffer.next_seq.setter", "Metric.record", "Metric.percentile", "Counter.inc",
                                "Gauge.set", "Gauge.inc", "Gauge.dec", "Timer.__init__", "MetricsFile.file_bytes",
                                "MetricsFile.init_header", "SessionBase.get_buffer", "SessionBase.buffer_updated")
    return fn(value) if positional_only else fn(**{name: value})


PARAMS = [p for p in _numeric_params() if p[:2] not in EXEMPT]


def test_every_numeric_parameter_is_walked():
    """A numeric parameter of a native entry point that this file does not
    know how to call fails here: add it to CALLS (or to EXEMPT, saying why)."""
    params = _numeric_params()
    assert len(params) >= 40, params  # the stub is read as expected
    missing = sorted({where for where, _, _ in params if where not in CALLS and
                      not any(w == where for w, _ in EXEMPT)})
    assert missing == [], f"numeric parameters of {missing} are not walked: add them to CALLS"
    stale = sorted(set(EXEMPT) - {p[:2] for p in params})
    assert stale == [], f"EXEMPT names parameters the stub no longer has: {stale}"


@pytest.mark.parametrize("where, name, annotation", PARAMS, ids=[f"{w}:{n}" for w, n, _ in PARAMS])
def test_bad_numbers_raise_value_or_type_error_naming_the_argument(where, name, annotation):
    for value, expected in _bad_values(where, name, annotation):
        with pytest.raises(Exception) as info:
            _call(where, name, value)
        exc = info.value
        assert isinstance(exc, expected) and not isinstance(exc, OverflowError), (
            f"{where}({name}={value!r}) raised {type(exc).__name__}: {exc}, expected {expected}")
        if not isinstance(exc, IndexError):
            # a property's setter may name the property (next_seq) rather than its parameter
            names = [name] + ([where.split(".")[-2]] if where.endswith(".setter") else [])
            assert any(re.search(rf"\b{re.escape(n)}\b", str(exc)) for n in names), (
                f"{where}({name}={value!r}): the message does not name {name!r}: {exc}")


@pytest.mark.parametrize("where, name, annotation", PARAMS, ids=[f"{w}:{n}" for w, n, _ in PARAMS])
def test_numpy_integers_are_taken_as_ints(where, name, annotation):
    """__index__ is the rule: numpy integers (and bools, as Python says)
    are ints; nothing else that merely converts to int is."""
    if annotation not in SCALAR_INT or annotation == "Union[str, int]":
        return
    key = (where, name)
    value = {("RingBuffer.__init__", "capacity"): 4096, ("SendBuffer.__init__", "max_bytes"): 4096,
             ("FrameDecoder.__init__", "max_packet_size"): 4096, ("Timer.__init__", "ns_per_unit"): 1000,
             ("Aggregator.unpack", "max_packet_size"): 4096, ("PacketBatch.over", "max_packet_size"): 4096,
             ("MetricsFile.init_header", "slots"): 4, ("Aggregator.__init__", "max_frame_size"): 4096,
             ("Aggregator.__init__", "acceleration"): 1, ("SessionBase.buffer_updated", "nbytes"): 0}.get(key, 1)
    if key == ("RingBuffer.commit", "n") or key == ("RingBuffer.consume", "n"):
        value = 1
    _call(where, name, np.uint16(value))
    _call(where, name, np.int64(value))


def test_encode_never_truncates_a_float():
    """Found by the fuzz campaign of issue 14: fp.encode(3.99, b"") wrote type 3."""
    with pytest.raises(TypeError, match="type must be an int, not 'float'"):
        fp.encode(3.99, b"")
    with pytest.raises(TypeError, match="seq must be an int"):
        fp.SendBuffer().send(1, b"", seq=3.5)
    assert fp.encode(np.uint16(3), b"") == fp.encode(3, b"")
