"""The README stays the reference: every probe, setting-bearing module, failure reason and
metric family the code can emit is documented there."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import probed.probes
from probed.exposition import SelfMetrics
from probed.probes import PROBES
from probed.probes.base import Family, Reason

README = (Path(__file__).parent.parent / "README.md").read_text()


def _families() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(probed.probes.__path__):
        module = importlib.import_module(f"probed.probes.{info.name}")
        names |= {v.name for v in vars(module).values() if isinstance(v, Family)}
    return names


def test_every_probe_is_documented() -> None:
    missing = [name for name in PROBES if f"`{name}`" not in README]
    assert not missing, missing


def test_every_reason_is_documented() -> None:
    missing = [r.value for r in Reason if f"`{r.value}`" not in README]
    assert not missing, missing


def test_every_metric_family_is_documented() -> None:
    missing = sorted(name for name in _families() if name not in README)
    assert not missing, missing


def test_every_daemon_metric_is_documented() -> None:
    registry = SelfMetrics().registry
    names = {metric.name for metric in registry.collect()}
    assert "probed_tasks" in names
    missing = sorted(name for name in names if f"`{name}" not in README)
    assert not missing, missing
