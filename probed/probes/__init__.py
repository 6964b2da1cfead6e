"""PROBES: the one registry that names every protocol.

A probe's module is imported the first time its spec is looked up: a config that uses
three protocols, or a `probed scan heartbleed`, does not pay for importing asyncssh
and aiomysql.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from probed.probes.base import ProbeSpec

# Protocol name -> module in probed.probes. Adding a protocol adds one line here.
_MODULES = {
    "tcp": "tcp",
    "heartbleed": "heartbleed",
    "http": "http",
    "tls": "tls",
    "ssh": "ssh",
    "mysql": "mysql",
    "backup": "backup",
    "smtp": "smtp",
    "pop3": "pop3",
    "imap": "imap",
    "ftp": "ftp",
    "mailflow": "mailflow",
}


class _Registry(Mapping[str, ProbeSpec]):
    def __init__(self) -> None:
        self._specs: dict[str, ProbeSpec] = {}

    def __getitem__(self, name: str) -> ProbeSpec:
        spec = self._specs.get(name)
        if spec is None:
            module = importlib.import_module(f"probed.probes.{_MODULES[name]}")
            spec = self._specs[name] = module.SPEC
            assert isinstance(spec, ProbeSpec)
            assert spec.name == name, f"{module.__name__} registers {spec.name!r}"
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


PROBES: Mapping[str, ProbeSpec] = _Registry()
