"""Hypothesis strategies that build any protobuf message from its descriptor.

:func:`messages` walks ``DESCRIPTOR`` generically: every scalar type gets hostile values (huge and
unicode strings with NULs, negative and extreme integers, NaN and infinities, unknown enum numbers),
repeated fields sometimes get thousands of duplicate entries, oneofs get at most one member set,
and maps get odd keys. ``hints`` maps a field name to an extra strategy (known job ids, node ids)
so that some values reach past the first validation and into the state machines; a hint
gives a whole field's value (a list for a repeated field), ``"Type.field"`` before ``"field"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

#: Largest generated string or bytes value (the brief: "huge strings up to ~2 MB").
HUGE = 2_000_000
#: Repeated fields sometimes hold this many (duplicate) entries.
MANY = 5_000
#: ... but one repeated field never holds more than about this many bytes.
REPEAT_BUDGET = 3_000_000

Hints = Mapping[str, st.SearchStrategy[Any]]

# Surrogate-free text (protobuf strings must be valid UTF-8); NUL and control characters included.
_CHARS = st.characters(exclude_categories=("Cs",))
_ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "..",
        "../../etc/passwd",
        "/",
        "a/b",
        "%s%n",
        "\u202e",
        "é",
        "日本語",
        "💥",
        "-1",
        "9" * 40,
        "NaN",
        "j-1",
        "x" * 129,
        "x" * 254,
    ]
)


def _rarely(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], percent: int = 4) -> Any:
    """``rare`` about ``percent``% of the time (huge values are costly; a few are enough)."""
    return st.integers(0, 99).flatmap(lambda p: rare if p < percent else common)


def _huge_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda unit, n: (unit * (n // len(unit) + 1))[:n],
        st.text(_CHARS, min_size=1, max_size=4),
        st.integers(0, HUGE),
    )


def texts() -> st.SearchStrategy[str]:
    """Short random unicode, odd fixed strings, and (rarely) strings up to ~2 MB."""
    return _rarely(st.one_of(st.text(_CHARS, max_size=24), _ODD_STRINGS), _huge_text())


def blobs() -> st.SearchStrategy[bytes]:
    return _rarely(st.binary(max_size=64), st.builds(lambda n: b"\xff\x00" * (n // 2), st.integers(0, HUGE)))


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (lo, lo + 1, -1, 0, 1, 2, 1000, 10_000, 10_001, hi - 1, hi) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -3), min(hi, 16)), st.integers(lo, hi))


def _floats(width: int) -> st.SearchStrategy[float]:
    big = 3.4e38 if width == 32 else 1.7e308
    return st.one_of(
        st.sampled_from(
            [math.nan, math.inf, -math.inf, -0.0, 0.0, -1.0, 0.5, 1e-300 if width == 64 else 1e-30, big, -big]
        ),
        st.floats(width=width, allow_nan=True, allow_infinity=True),
    )


_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        base: st.SearchStrategy[Any] = _ints(*_INT_RANGES[t])
    elif t == _T.TYPE_BOOL:
        base = st.booleans()
    elif t == _T.TYPE_DOUBLE:
        base = _floats(64)
    elif t == _T.TYPE_FLOAT:
        base = _floats(32)
    elif t == _T.TYPE_STRING:
        base = texts()
    elif t == _T.TYPE_BYTES:
        base = blobs()
    elif t == _T.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        base = st.one_of(st.sampled_from(known), _ints(-(2**31), 2**31 - 1))  # open enums: any int32
    else:  # pragma: no cover - every scalar type is listed above
        raise TypeError(f"unsupported field type {t} of {field.full_name}")
    return base


def _approx_size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, dict):
        return sum(_approx_size(k) + _approx_size(v) for k, v in value.items()) + 2
    if isinstance(value, list):
        return sum(_approx_size(v) for v in value) + 2
    return 8


def _copies(value: Any, n: int) -> int:
    """``n``, lowered so that ``n`` copies of ``value`` stay within :data:`REPEAT_BUDGET`."""
    return max(1, min(n, REPEAT_BUDGET // _approx_size(value)))


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A few entries, or (rarely) thousands of copies of one (duplicate ids, huge inventories)."""
    many = st.builds(lambda v, n: [v] * _copies(v, n), element, st.integers(50, MANY))
    return _rarely(st.lists(element, max_size=4), many, 6)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _T.TYPE_MESSAGE and field.is_repeated and field.message_type.GetOptions().map_entry


_ABSENT = object()


def _sometimes(value: st.SearchStrategy[Any], percent: int) -> st.SearchStrategy[Any]:
    return st.integers(0, 99).flatmap(lambda p: value if p < percent else st.just(_ABSENT))


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not _ABSENT}


def _message_value(
    desc: Descriptor,
    depth: int,
    hints: Hints,
    cache: dict[tuple[str, int, int], st.SearchStrategy[Any]],
    presence: int = 50,
) -> st.SearchStrategy[dict[str, Any]]:
    """A dict ``field name -> value`` for ``desc`` (values of message fields are such dicts);
    each field is present ``presence`` percent of the time."""
    key = (desc.full_name, depth, presence)
    if key in cache:
        return cache[key]
    fields: dict[str, st.SearchStrategy[Any]] = {}
    oneofs: dict[str, list[str]] = {}
    for field in desc.fields:
        if field.containing_oneof is not None:
            oneofs.setdefault(field.containing_oneof.name, []).append(field.name)
        if _is_map(field):
            entry = field.message_type
            k = _scalar(entry.fields_by_name["key"])
            vf = entry.fields_by_name["value"]
            if vf.type == _T.TYPE_MESSAGE:
                if depth <= 0:
                    continue
                v: st.SearchStrategy[Any] = _message_value(vf.message_type, depth - 1, hints, cache, presence)
            else:
                v = _scalar(vf)
            fields[field.name] = _rarely(
                st.dictionaries(k, v, max_size=4),
                st.builds(
                    lambda val, n: {f"k{i}": val for i in range(_copies(val, n))}, v, st.integers(50, MANY)
                )
                if entry.fields_by_name["key"].type == _T.TYPE_STRING
                else st.dictionaries(k, v, max_size=4),
                6,
            )
            continue
        if field.type == _T.TYPE_MESSAGE:
            if depth <= 0:
                continue
            elem: st.SearchStrategy[Any] = _message_value(
                field.message_type, depth - 1, hints, cache, presence
            )
        else:
            elem = _scalar(field)
        fields[field.name] = _repeated(elem) if field.is_repeated else elem

    for name, value in fields.items():
        hint = hints.get(f"{desc.name}.{name}", hints.get(name))
        if hint is not None:  # a hint is a whole field's value (a list for a repeated field)
            fields[name] = st.one_of(hint, hint, value)

    members = {name for names in oneofs.values() for name in names}
    others = {k: v for k, v in fields.items() if k not in members}
    if presence == 50:
        plain = st.fixed_dictionaries({}, optional=others)
    else:
        plain = st.builds(_present, **{k: _sometimes(v, presence) for k, v in others.items()})
    groups = [
        st.one_of(st.just({}), *(st.builds(_single, st.just(n), fields[n]) for n in names if n in fields))
        if presence == 50
        else _sometimes(
            st.one_of(*(st.builds(_single, st.just(n), fields[n]) for n in names if n in fields)), presence
        ).map(lambda v: {} if v is _ABSENT else v)
        for names in oneofs.values()
    ]
    strategy = st.builds(_merge, plain, *groups)
    cache[key] = strategy
    return strategy


def _single(name: str, value: Any) -> dict[str, Any]:
    return {name: value}


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out


def fill(msg: Message, values: Mapping[str, Any]) -> Message:
    """Set ``values`` (as built by :func:`_message_value`) on ``msg``; returns ``msg``."""
    desc = msg.DESCRIPTOR
    for name, value in values.items():
        field = desc.fields_by_name[name]
        target = getattr(msg, name)
        if _is_map(field):
            vf = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if vf.type == _T.TYPE_MESSAGE:
                    fill(target[k], v)
                else:
                    target[k] = v
        elif field.type == _T.TYPE_MESSAGE:
            if field.is_repeated:
                for v in value:
                    fill(target.add(), v)
            else:
                target.SetInParent()
                fill(target, value)
        elif field.is_repeated:
            target.extend(value)
        else:
            try:
                setattr(msg, name, value)
            except TypeError as exc:  # a hint of the wrong type: say which field
                raise TypeError(f"{field.full_name} = {value!r}: {exc}") from exc
    return msg


def messages(cls: type[Message], *, depth: int = 4, hints: Hints | None = None) -> st.SearchStrategy[Message]:
    """Random instances of the protobuf class ``cls`` (nested messages up to ``depth`` levels)."""
    values = _message_value(cls.DESCRIPTOR, depth, hints or {}, {})
    return st.builds(lambda v: fill(cls(), v), values)


def oneof_messages(
    cls: type[Message], member: str, *, depth: int = 4, hints: Hints | None = None
) -> st.SearchStrategy[Message]:
    """Instances of ``cls`` with the oneof member ``member`` set to a random message."""
    field = cls.DESCRIPTOR.fields_by_name[member]
    values = _message_value(field.message_type, depth, hints or {}, {})

    def build(v: dict[str, Any]) -> Message:
        msg = cls()
        getattr(msg, member).SetInParent()
        fill(getattr(msg, member), v)
        return msg

    return st.builds(build, values)


def mutated(
    template: Message, *, presence: int = 12, depth: int = 4, hints: Hints | None = None
) -> st.SearchStrategy[Message]:
    """Copies of the valid message ``template`` with a few random fields overwritten (scalars),
    merged into (messages) or appended to (repeated fields and maps): inputs that get past the
    first checks and into the state machines."""
    values = _message_value(template.DESCRIPTOR, depth, hints or {}, {}, presence)

    def build(v: dict[str, Any]) -> Message:
        msg = type(template)()
        msg.CopyFrom(template)
        return fill(msg, v)

    return st.builds(build, values)
