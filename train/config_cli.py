"""One argparse parser per training config dataclass: every field is a ``--flag`` with the field's default.

Booleans take ``true``/``false``; tuples take JSON (``--resolutions '[[256, 256]]'``); ``None`` defaults take a
string. Both training scripts use it, so their flags behave the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json


def _to_tuple(v):
    return tuple(_to_tuple(i) for i in v) if isinstance(v, list) else v


def _bool(s: str) -> bool:
    return s.lower() in ("1", "true", "yes")


def parse_config(cls, argv: list[str] | None, *, prog: str, description: str):
    """Parse ``argv`` into an instance of the frozen dataclass ``cls``."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default
        if isinstance(default, bool):
            kind = _bool
        elif isinstance(default, tuple):
            kind = lambda s: _to_tuple(json.loads(s))  # noqa: E731
        elif default is None or default is dataclasses.MISSING:
            kind = str
        else:
            kind = type(default)
        p.add_argument(f"--{f.name}", type=kind, default=None if default is dataclasses.MISSING else default,
                       required=default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    return cls(**vars(p.parse_args(argv)))
