"""OTLP/protobuf bytes of finished spans, written by hand: an ``ExportTraceServiceRequest``.

The SDK's encoder builds one protobuf message object per span, attribute, value, event and
link, then serializes them (and hashes the resource per span to group them): most of what
exporting a span costs. The wire format is simple — varints, fixed-width integers and
length-delimited fields — so this writes the same bytes directly, field by field in field
number order, with the same presence rules as the SDK's encoder
(``opentelemetry.exporter.otlp.proto.common``): the output is byte-for-byte what
``encode_spans(spans).SerializeToString()`` gives (tests/test_trace_otlp.py checks it, and
decodes it with ``opentelemetry.proto``). It reads spans through the `ReadableSpan` interface
only (name, context, parent, kind, times, attributes, events, links, status, resource, scope)
and imports nothing; an attribute value it cannot encode is left out, as the SDK does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

_SMALL = [bytes((i,)) for i in range(128)]
_I64 = struct.Struct("<Q").pack
_F64 = struct.Struct("<d").pack
_I32 = struct.Struct("<I").pack
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags masks: the SDK sets these two only
_REMOTE = {False: _I32(_HAS_IS_REMOTE), True: _I32(_HAS_IS_REMOTE | _IS_REMOTE)}
_FLAGS = {k: b"\x85\x01" + v for k, v in _REMOTE.items()}  # Span.flags (field 16, fixed32)
_LINK_FLAGS = {k: b"\x35" + v for k, v in _REMOTE.items()}  # Link.flags (field 6)
_KINDS: dict[Any, bytes] = {}  # SpanKind → the encoded ``Span.kind`` field
_CODES: dict[Any, int] = {}  # StatusCode → its number
_TRUE, _FALSE = b"\x10\x01", b"\x10\x00"
_KEYS: dict[str, bytes] = {}  # attribute key → its encoded ``KeyValue.key`` field
_CACHE: dict[tuple, bytes] = {}  # (tag, key, type, value) → its encoded field (short values)


class Unencodable(ValueError):
    """An attribute value with no OTLP form (the SDK's encoder leaves such an attribute out)."""


def varint(n: int) -> bytes:
    """``n`` (≥ 0) as a protobuf base-128 varint."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + payload


def _value(v: Any) -> bytes:
    """The body of an ``AnyValue`` (the SDK's order of checks: bool before int)."""
    t = type(v)
    if t is str:
        return _field(b"\x0a", v.encode())
    if t is bool:
        return _TRUE if v else _FALSE
    if t is int:
        return _int(v)
    if t is float:
        return b"\x21" + _F64(v)
    if v is None:
        return b""
    if isinstance(v, bool):
        return _TRUE if v else _FALSE
    if isinstance(v, str):
        return _field(b"\x0a", str.encode(v))
    if isinstance(v, int):
        return _int(int(v))
    if isinstance(v, float):
        return b"\x21" + _F64(float(v))
    if isinstance(v, bytes):
        return _field(b"\x3a", bytes(v))
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(x)) for x in v]))
    if isinstance(v, Mapping):
        pairs = [_field(b"\x0a", _key_value(str(k), x)) for k, x in v.items()]
        return _field(b"\x32", b"".join(pairs))
    raise Unencodable(f"invalid type {type(v)} of value {v!r}")


def _int(v: int) -> bytes:
    if not _INT_MIN <= v <= _INT_MAX:
        raise Unencodable(f"integer out of int64 range: {v}")
    return b"\x18" + varint(v & 0xFFFFFFFFFFFFFFFF)


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode()) if key else b""
        if len(_KEYS) < 4096:
            _KEYS[key] = encoded
    return encoded


def _key_value(key: str, value: Any) -> bytes:
    return _key(key) + _field(b"\x12", _value(value))


def _attribute(tag: bytes, key: str, value: Any) -> bytes | None:
    """One ``KeyValue`` field with ``tag``; None for a value with no OTLP form."""
    try:
        if type(value) is tuple:  # the SDK keeps sequences as tuples
            items = b"".join([_field(b"\x0a", _value(x)) for x in value])
            return _field(tag, _key(key) + _field(b"\x12", _field(b"\x2a", items)))
        return _field(tag, _key(key) + _field(b"\x12", _value(value)))
    except (Unencodable, UnicodeEncodeError):
        return None


def attributes(tag: bytes, attrs: Mapping[str, Any] | None) -> list[bytes]:
    """Each attribute as a ``KeyValue`` field with ``tag``, in order; unencodable ones left out.
    Short str, int and bool values repeat from span to span: their fields are remembered."""
    if not attrs:
        return []
    out = []
    cache = _CACHE
    for key, value in attrs.items():
        t = type(value)
        if t is int or t is bool or (t is str and len(value) <= 64):
            memo = (tag, key, t, value)
            encoded = cache.get(memo)
            if encoded is None:
                encoded = _attribute(tag, key, value)
                if encoded is None:
                    continue
                if len(cache) >= 8192:
                    cache.clear()
                cache[memo] = encoded
            out.append(encoded)
        else:
            encoded = _attribute(tag, key, value)
            if encoded is not None:
                out.append(encoded)
    return out


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    code = _code(status.status_code)
    if not code and not status.description:
        return b"\x7a\x00"
    body = _field(b"\x12", status.description.encode()) if status.description else b""
    if code:
        body += b"\x18" + varint(code)
    return _field(b"\x7a", body)


def _code(member: Any) -> int:
    code = _CODES.get(member)
    if code is None:
        code = _CODES[member] = int(member.value)
    return code


def _kind(member: Any) -> bytes:
    """``Span.kind``: the SDK's `SpanKind` values are the protobuf enum's, less one."""
    encoded = _KINDS.get(member)
    if encoded is None:
        encoded = _KINDS[member] = b"\x30" + varint(int(member.value) + 1)
    return encoded


def _trace_state(state: Any) -> bytes:
    if not state:
        return b""
    text = ",".join([f"{k}={v}" for k, v in state.items()])
    return _field(b"\x1a", text.encode()) if text else b""


def span(s: Any) -> bytes:
    """One ``Span`` message (its body) of a `ReadableSpan`."""
    ctx = s.context
    parent = s.parent
    out = [
        b"\x0a\x10",
        ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        ctx.span_id.to_bytes(8, "big"),
        _trace_state(ctx.trace_state),
    ]
    if parent:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    if s.name:
        out.append(_field(b"\x2a", s.name.encode()))
    out.append(_kind(s.kind))
    if s.start_time:
        out += (b"\x39", _I64(s.start_time))
    if s.end_time:
        out += (b"\x41", _I64(s.end_time))
    out += attributes(b"\x4a", s.attributes)
    if s.dropped_attributes:
        out += (b"\x50", varint(s.dropped_attributes))
    for event in s.events:
        body = [b"\x09", _I64(event.timestamp)] if event.timestamp else []
        if event.name:
            body.append(_field(b"\x12", event.name.encode()))
        body += attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += (b"\x20", varint(event.dropped_attributes))
        out.append(_field(b"\x5a", b"".join(body)))
    if s.dropped_events:
        out += (b"\x60", varint(s.dropped_events))
    for link in s.links:
        lc = link.context
        body = [b"\x0a\x10", lc.trace_id.to_bytes(16, "big"), b"\x12\x08"]
        body.append(lc.span_id.to_bytes(8, "big"))
        body += attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += (b"\x28", varint(link.dropped_attributes))
        body.append(_LINK_FLAGS[bool(lc.is_remote)])
        out.append(_field(b"\x6a", b"".join(body)))
    if s.dropped_links:
        out += (b"\x70", varint(s.dropped_links))
    out.append(_status(s.status))
    out.append(_FLAGS[bool(parent and parent.is_remote)])
    return b"".join(out)


def _resource(resource: Any) -> bytes:
    """``ResourceSpans.resource`` (always present, as the SDK writes it)."""
    attrs = resource.attributes if resource is not None else None
    return _field(b"\x0a", b"".join(attributes(b"\x0a", attrs)))


def _scope(scope: Any) -> bytes:
    """``ScopeSpans.scope`` (always present; empty for a span without one)."""
    if scope is None:
        return b"\x0a\x00"
    body = []
    if scope.name:
        body.append(_field(b"\x0a", scope.name.encode()))
    if scope.version:
        body.append(_field(b"\x12", scope.version.encode()))
    body += attributes(b"\x1a", scope.attributes)
    return _field(b"\x0a", b"".join(body))


class Encoder:
    """Encodes batches of spans; remembers each resource's and scope's bytes (they repeat)."""

    def __init__(self) -> None:
        self._heads: dict[int, tuple[Any, bytes]] = {}

    def _head(self, obj: Any, encode: Any) -> bytes:
        got = self._heads.get(id(obj))
        if got is None or got[0] is not obj:
            if len(self._heads) > 64:
                self._heads.clear()
            got = self._heads[id(obj)] = (obj, encode(obj))
        return got[1]

    def request(self, spans: Sequence[Any]) -> bytes:
        """The ``ExportTraceServiceRequest`` of ``spans``, grouped by resource, then by scope,
        in order of first appearance (equal resources or scopes form one group, as in the SDK;
        compared by identity first: hashing a `Resource` dumps its attributes as JSON)."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        resources: dict[int, int] = {}  # id of a span's resource → id of its group's
        scopes: dict[tuple[int, int], int] = {}
        for s in spans:
            resource, scope = s.resource, s.instrumentation_scope or None
            r = resources.get(id(resource))
            if r is None:
                r = next((k for k, (g, _) in groups.items() if g == resource), id(resource))
                resources[id(resource)] = r
                groups.setdefault(r, (resource, {}))
            by_scope = groups[r][1]
            c = scopes.get((r, id(scope)))
            if c is None:
                c = next((k for k, (g, _) in by_scope.items() if g == scope), id(scope))
                scopes[(r, id(scope))] = c
                by_scope.setdefault(c, (scope, []))
            by_scope[c][1].append(_field(b"\x12", span(s)))
        out = []
        for resource, by_scope in groups.values():
            body = [self._head(resource, _resource)]
            for scope, encoded in by_scope.values():
                head = self._head(scope, _scope) if scope is not None else b"\x0a\x00"
                url = getattr(scope, "schema_url", None)
                tail = _field(b"\x1a", url.encode()) if url else b""
                body.append(_field(b"\x12", b"".join([head, *encoded, tail])))
            url = getattr(resource, "schema_url", None)
            if url:
                body.append(_field(b"\x1a", url.encode()))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)
