"""PROBES: the one registry that names every protocol."""

from __future__ import annotations

from probed.probes import heartbleed, tcp
from probed.probes.base import ProbeSpec

PROBES: dict[str, ProbeSpec] = {spec.name: spec for spec in (tcp.SPEC, heartbleed.SPEC)}
