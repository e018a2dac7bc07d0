"""Identifiers: sortable job ids, incarnations, command and request ids."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def sortable_id(prefix: str) -> str:
    """``prefix-`` + 9 chars of milliseconds + 6 random chars; sorts by creation time."""
    millis = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(4), "big")
    return f"{prefix}-{_b32(millis, 9)}{_b32(rand, 6)}"


def new_job_id() -> str:
    return sortable_id("j")


def new_incarnation() -> str:
    """A fresh id for one process lifetime; peers use it to notice restarts."""
    return os.urandom(8).hex()


def new_command_id() -> str:
    return os.urandom(8).hex()


def new_request_id() -> str:
    return os.urandom(12).hex()
