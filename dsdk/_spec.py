"""Job specs as users write them: a :class:`JobSpec`, a mapping, or YAML text.

The field reference (the YAML form) is in :mod:`domainos.jobspec`; validation is the same code
the master runs, so a bad spec is refused here, before a request leaves, with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domainos.errors import InvalidArgument
from domainos.jobspec import JobSpec, parse_spec, parse_spec_yaml

SpecLike = JobSpec | Mapping[str, Any] | str


def as_spec(spec: SpecLike, *, source: str = "<job spec>") -> JobSpec:
    """Validate ``spec`` into a :class:`JobSpec` (raises :class:`InvalidArgument` naming the field)."""
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, str):
        return parse_spec_yaml(spec, source)
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    raise InvalidArgument(f"expected a JobSpec, a mapping or YAML text, got {type(spec).__name__}")


def load_spec_file(path: str, text: str | None = None) -> JobSpec:
    """Read and validate a job file; errors name the file and the line or the field path.

    ``text`` is the file's content when it was already read (``-`` for standard input).
    """
    if text is None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise InvalidArgument(f"file not found: {path}") from None
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    source = "<stdin>" if path == "-" else path
    try:
        return as_spec(text, source=source)
    except InvalidArgument as exc:
        if exc.field:  # a field error: say which file it came from
            raise InvalidArgument(exc.message, field=f"{source}: {exc.field}") from None
        raise
