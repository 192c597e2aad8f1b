"""The AMQP properties of a publish, marshalled to pamqp's very bytes, in half the time.

pamqp marshals properties generically on every publish, looking up each property's type
by name, and encodes a headers table entry by entry: for an envelope (five headers, six
properties) that was the largest cost of a send in postdate's own code, about 15 us.
:class:`PublishProperties` runs pamqp's own marshalling loop with the per-property lookups
done once, and encodes the headers table from cached entries: most repeat from one
message to the next (attempt, schema, queue, the ladder's hop keys in ``CC``), each
encoded once by pamqp itself; integers (the due time) are encoded per message by pamqp's
own function. The table is encoded from its content when the frame is marshalled, so a
header changed after the properties were built is sent as changed.
``tests/unit/test_wire.py`` pins the bytes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

import aiormq
import pamqp.encode
from pamqp.common import FieldArray, FieldTable, FieldValue, Struct

# Distinct string entries kept: queues, attempts and ladder hop keys (one list per delay in
# whole seconds and queue); an entry not kept is encoded by pamqp on every publish.
ENTRY_CACHE_SIZE = 4096


class PublishProperties(aiormq.spec.Basic.Properties):
    """``Basic.Properties`` marshalled as pamqp marshals them, with the headers table
    encoded from cached entries (:func:`encode_table`).

    It declares no ``__slots__``: pamqp's properties are the names in the instance's
    ``__slots__``, which a subclass declaring its own would hide.
    """

    def marshal(self) -> bytes:
        """The encoded properties: pamqp's ``BasicProperties.marshal``, its per-property
        type lookups done once (:data:`_PLAN`)."""
        flags = 0
        parts = []
        for name, flag, encode in _PLAN:
            value = getattr(self, name)
            if value is not None and value != "":
                flags |= flag
                parts.append(encode(value))
        flag_pieces = []
        while True:
            remainder = flags >> 16
            partial_flags = flags & 0xFFFE
            if remainder != 0:
                partial_flags |= 1
            flag_pieces.append(struct.pack(">H", partial_flags))
            flags = remainder
            if not flags:
                break
        return b"".join(flag_pieces + parts)


def encode_table(table: FieldTable) -> bytes:
    """``pamqp.encode.field_table(table)``, to the byte, from cached entries.

    Anything but string keys with string, integer or list-of-string values, and any
    error, is left to pamqp (which raises its own error for what it cannot encode).
    """
    try:
        parts = []
        item: Any
        for key, item in sorted(table.items()):
            kind = type(item)
            if type(key) is not str:
                return pamqp.encode.field_table(table)
            if kind is int:  # what pamqp's encode_table_value does for an int (not a bool)
                parts.append(_key(key) + pamqp.encode.table_integer(item))
            elif kind is str:
                parts.append(_entry(key, item))
            elif kind is list and all(type(word) is str for word in item):
                parts.append(_entry(key, tuple(item)))
            else:
                parts.append(_single(key, item))
    except Exception:
        return pamqp.encode.field_table(table)
    body = b"".join(parts)
    return Struct.integer.pack(len(body)) + body


@functools.lru_cache(maxsize=ENTRY_CACHE_SIZE)
def _key(key: str) -> bytes:
    """The encoded key of an entry: pamqp's entry for a None value, less the value (b"V")."""
    return _single(key, None)[:-1]


@functools.lru_cache(maxsize=ENTRY_CACHE_SIZE)
def _entry(key: str, value: str | tuple[str, ...]) -> bytes:
    """The encoded entry of a string or a list of strings (given as a tuple)."""
    return _single(key, list(value) if isinstance(value, tuple) else value)


def _single(key: str, value: FieldValue | FieldArray) -> bytes:
    """One entry as pamqp encodes it: a table of that entry alone, less its length."""
    return pamqp.encode.field_table({key: value})[Struct.integer.size :]


# Per property, in pamqp's order: its name, its flag bit and its encoder (as pamqp's
# ``encode.by_type`` picks it), the headers table's being :func:`encode_table`.
_PLAN: tuple[tuple[str, int, Callable[[Any], bytes]], ...] = tuple(
    (
        name,
        aiormq.spec.Basic.Properties.flags[name],
        encode_table
        if name == "headers"
        else pamqp.encode.METHODS[aiormq.spec.Basic.Properties.amqp_type(name)],
    )
    for name in aiormq.spec.Basic.Properties.__slots__
)
