"""``domainctl``: the DomainOS command line (``python -m domainctl`` or the ``domainctl`` script).

``main`` is re-exported lazily: importing it here eagerly would make ``python -m domainctl``
import ``domainctl.__main__`` twice (runpy warns about that).
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from domainctl.__main__ import main

        return main
    raise AttributeError(f"module 'domainctl' has no attribute {name!r}")
