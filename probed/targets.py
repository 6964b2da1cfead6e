"""Targets: host:port parsing, plain host files and Prometheus file_sd target files."""

from __future__ import annotations

import glob
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from probed.probes.base import Target

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class TargetFileError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_host_port(raw: str, default_port: int | None) -> Target:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> Target."""
    text = raw.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f'"{raw}": unclosed "[" in IPv6 address')
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f'"{raw}": expected ":port" after "]"')
        port_text = rest[1:]
        _check_ipv6(raw, host)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        _check_ipv6(raw, text)
    if not host or not (_HOSTNAME.fullmatch(host) or ":" in host):
        raise ValueError(f'"{raw}": invalid host name')
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f'"{raw}": invalid port "{port_text}" (1-65535)')
        port: int | None = int(port_text)
    else:
        port = default_port
    if port is None:
        raise ValueError(f'"{raw}": no port, and the module sets none (write "{raw}:PORT")')
    return Target(raw=text, host=host.rstrip(".") if ":" not in host else host, port=port)


def _check_ipv6(raw: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f'"{raw}": invalid IPv6 address') from None


def read_hosts_file(path: Path) -> list[tuple[str, int]]:
    """One target per line; ``#`` starts a comment; blank lines are ignored."""
    text = _read_text(path)
    hosts = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            hosts.append((entry, number))
    return hosts


def expand_file_sd(base: Path, pattern: str) -> list[Path]:
    """A path or a glob (in its last component, like Prometheus), relative to the config."""
    full = base / pattern
    if not glob.has_magic(pattern):
        if not full.is_file():
            raise TargetFileError([f"{full}: no such file"])
        return [full]
    return sorted(Path(p) for p in glob.glob(str(full)) if Path(p).is_file())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetFileError([f"cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise TargetFileError([f"{path} is not UTF-8 text"]) from None


def _parse_sd_document(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetFileError([f"{path}: invalid JSON: {exc}"]) from None
    if suffix in {".yml", ".yaml"}:
        import yaml  # noqa: PLC0415 - only file_sd in YAML needs it; scan start-up does not

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TargetFileError([f"{path}: invalid YAML: {exc}"]) from None
    raise TargetFileError([f"{path}: file_sd files end in .json, .yml or .yaml"])


def _sd_entry(entry: object, at: str) -> tuple[list[str], dict[str, str]]:
    """One target group, validated; raises ValueError with the problem."""
    # ValueError, not TypeError: a wrongly typed entry is bad input like any other.
    if not isinstance(entry, dict):
        raise ValueError(f"{at}: expected a table with targets and labels")  # noqa: TRY004
    unknown = set(entry) - {"targets", "labels"}
    if unknown:
        raise ValueError(f'{at}: unknown key "{sorted(unknown)[0]}"')
    targets, labels = entry.get("targets"), entry.get("labels") or {}
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{at}.targets: expected a list of strings")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"{at}.labels: expected a table of strings")
    bad = [k for k in labels if not _LABEL_NAME.fullmatch(k)]
    if bad:
        raise ValueError(f'{at}.labels: invalid label name "{bad[0]}"')
    return targets, {k: v for k, v in labels.items() if not k.startswith("__")}


def read_file_sd(path: Path) -> list[tuple[str, dict[str, str], str]]:
    """Prometheus file_sd (JSON or YAML): ``[{targets: [...], labels: {...}}, ...]``.

    Returns (target, labels, location) triples. Labels starting with ``__`` are meta labels
    and, as in Prometheus, dropped.
    """
    data = _parse_sd_document(path, _read_text(path))
    if data is None:
        return []
    if not isinstance(data, list):
        raise TargetFileError([f"{path}: expected a list of target groups"])
    out: list[tuple[str, dict[str, str], str]] = []
    problems: list[str] = []
    for i, entry in enumerate(data):
        at = f"{path.name}[{i}]"
        try:
            targets, labels = _sd_entry(entry, at)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        out += [(t, labels, f"{at}.targets[{j}]") for j, t in enumerate(targets)]
    if problems:
        raise TargetFileError(problems)
    return out
