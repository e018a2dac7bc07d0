"""Every node-agent test also fails when asyncio reports a leak: a task destroyed while pending
(an orphan) or an exception nobody retrieved."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_asyncio_leaks() -> Iterator[None]:
    handler = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"asyncio reported: {handler.messages}"
