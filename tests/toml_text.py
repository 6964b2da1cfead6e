"""A small TOML writer for tests that generate configs (tomllib reads, nothing writes)."""

from __future__ import annotations

import json
from typing import Any


def value(item: Any) -> str:
    """One TOML value: strings (JSON escapes are TOML escapes), numbers, booleans, arrays
    and inline tables."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, str):
        return json.dumps(item)
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    raise TypeError(f"no TOML for {type(item).__name__}")


def key(name: str) -> str:
    """A bare key where allowed, else a quoted one."""
    if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        return name
    return json.dumps(name)


def document(tables: dict[str, Any]) -> str:
    """Top-level keys, then ``[table]`` per dict and ``[[array]]`` per list of dicts."""
    head: list[str] = []
    body: list[str] = []
    for name, item in tables.items():
        if isinstance(item, dict):
            body.append(f"[{key(name)}]")
            body += [f"{key(k)} = {value(v)}" for k, v in item.items()]
        elif isinstance(item, list) and item and all(isinstance(v, dict) for v in item):
            for entry in item:
                body.append(f"[[{key(name)}]]")
                body += [f"{key(k)} = {value(v)}" for k, v in entry.items()]
        else:
            head.append(f"{key(name)} = {value(item)}")
    return "\n".join(head + body) + "\n"
