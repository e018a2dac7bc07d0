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


def as_spec(spec: SpecLike | None = None, *, source: str = "<job spec>", **fields: Any) -> JobSpec:
    """Validate ``spec`` into a :class:`JobSpec` (raises :class:`InvalidArgument` naming the field).

    ``fields`` are spec fields as in the YAML form (``command=[...]``, ``replicas=8``,
    ``gang=True``, ``parallelism={"tp": 8, "pp": 2, "dp": 4}``, ``locality={...}``, ...); they
    replace the same top-level fields of a mapping or YAML ``spec``, or make the whole spec when
    ``spec`` is None. Either way the result goes through :func:`domainos.jobspec.parse_spec`.
    """
    if fields:
        if isinstance(spec, JobSpec):
            raise InvalidArgument(
                "a JobSpec is already validated: pass the fields in a mapping, or build a new spec"
                f" (got fields {', '.join(sorted(fields))})"
            )
        base: Mapping[str, Any] = {}
        if isinstance(spec, str):
            from domainos.config import parse_yaml
            from domainos.errors import ConfigError

            try:
                parsed = parse_yaml(spec, source)
            except ConfigError as exc:
                raise InvalidArgument(str(exc)) from None
            if not isinstance(parsed, Mapping):
                return parse_spec(parsed)  # the usual "must be a mapping" error
            base = parsed
        elif isinstance(spec, Mapping):
            base = spec
        elif spec is not None:
            raise InvalidArgument(f"expected a JobSpec, a mapping or YAML text, got {type(spec).__name__}")
        return parse_spec({**base, **fields})
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, str):
        return parse_spec_yaml(spec, source)
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    if spec is None:
        raise InvalidArgument(
            "is required: the program and its arguments, e.g. [python3, train.py]", field="command"
        )
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
