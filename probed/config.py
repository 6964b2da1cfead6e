"""probes.toml -> validated, frozen objects. Every error names its path and the problem."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from probed.durations import Duration, format_duration, parse_duration
from probed.probes import PROBES
from probed.probes.base import ProbeSpec, Settings, Target
from probed.secrets import SecretStore
from probed.targets import (
    TargetFileError,
    expand_file_sd,
    parse_host_port,
    read_file_sd,
    read_hosts_file,
)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"module", "target", "job", "instance", "le", "quantile"})


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f'invalid label name "{name}"')
        if name in RESERVED_LABELS:
            raise ValueError(f'label "{name}" is reserved (probed or Prometheus sets it)')
    return labels


Labels = Annotated[dict[str, str], Field(default_factory=dict)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Section):
    listen: str = "127.0.0.1:9753"
    max_concurrency: int = Field(default=1000, ge=1, le=1_000_000)
    per_host_concurrency: int = Field(default=8, ge=1, le=100_000)
    allow_probe_any_target: bool = False
    shutdown_grace: Duration = 5.0
    watch_interval: Duration = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f'expected "host:port", got "{value}"')
        del host
        return value


class DefaultsSection(_Section):
    interval: Duration = 60.0
    timeout: Duration = 10.0


class GroupSection(_Section):
    name: str = Field(min_length=1)
    modules: list[str] = Field(min_length=1)
    hosts: list[str] = Field(default_factory=list)
    hosts_file: str | None = None
    file_sd: list[str] = Field(default_factory=list)
    labels: Labels
    interval: Duration | None = None
    timeout: Duration | None = None

    _labels = field_validator("labels")(_check_labels)


class ProbeSection(_Section):
    module: str
    target: str = Field(min_length=1)
    labels: Labels
    interval: Duration | None = None
    timeout: Duration | None = None

    _labels = field_validator("labels")(_check_labels)


class Document(_Section):
    server: ServerSection = Field(default_factory=ServerSection)
    defaults: DefaultsSection = Field(default_factory=DefaultsSection)
    modules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    groups: list[GroupSection] = Field(default_factory=list)
    probes: list[ProbeSection] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    spec: ProbeSpec
    settings: Settings
    timeout: float | None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One scheduled check. Equal specs across a reload mean "unchanged"."""

    module: str
    target: Target
    spec: ProbeSpec = field(compare=False)
    settings: Settings
    interval: float
    timeout: float
    labels: tuple[tuple[str, str], ...]
    group: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.module, self.target.raw)

    @property
    def host(self) -> str:
        """The destination host, the unit of the per-host concurrency cap."""
        return self.target.host


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerSection
    defaults: DefaultsSection
    modules: dict[str, Module]
    jobs: tuple[JobSpec, ...]
    watched_files: tuple[Path, ...]
    """Host files and file_sd paths (globs kept as patterns) that trigger a reload."""
    secrets: SecretStore

    def summary(self) -> str:
        per_module = Counter(job.module for job in self.jobs)
        per_group = Counter(job.group or "(probes)" for job in self.jobs)
        lines = [f"{self.path}: OK, {len(self.jobs)} jobs, {len(self.modules)} modules"]
        lines.append("jobs per module:")
        lines += [f"  {name}: {per_module.get(name, 0)}" for name in sorted(self.modules)]
        lines.append("jobs per group:")
        lines += [f"  {name}: {n}" for name, n in sorted(per_group.items())]
        return "\n".join(lines)


class ConfigError(Exception):
    """Invalid configuration: one or more ``path: problem`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        return (ConfigError, (self.source, self.problems))  # crosses the reload pipe


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """The element type of a container or optional annotation (``list[X]`` -> ``X``)."""
    args = [a for a in get_args(annotation) if a not in (type(None), Ellipsis)]
    return args[-1] if args else None


def _fields_at(model: Any, loc: tuple[int | str, ...]) -> list[str]:
    """The field names valid at ``loc`` inside ``model``, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        if get_origin(current) is not None:
            # A list index or dict key: step into the element type.
            current = _unwrap(current)
            if get_origin(current) is not None:
                current = _unwrap(current)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = info.annotation
        if get_origin(current) is not None and type(None) in get_args(current):
            current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def pydantic_problems(
    exc: ValidationError, model: Any, prefix: tuple[int | str, ...] = ()
) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc_path(prefix + loc)
        if err["type"] == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            hint = suggest(key, _fields_at(model, parent))
            path = _loc_path(prefix + parent) or "top level"
            problems.append(f'{path}: unknown key "{key}"{hint}')
        elif err["type"] == "missing":
            parent, key = loc[:-1], str(loc[-1])
            problems.append(f'{_loc_path(prefix + parent) or "top level"}: missing key "{key}"')
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{path}: {msg}")
    return problems


def load(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read and validate a probes.toml; raises ConfigError naming every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    return build(raw, path, environ)


def build(raw: dict[str, Any], path: Path, environ: dict[str, str] | None = None) -> Config:
    try:
        doc = Document.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), pydantic_problems(exc, Document)) from None
    problems: list[str] = []
    modules = _build_modules(doc, problems)
    builder = _JobBuilder(doc, modules, path.parent, problems)
    builder.build()
    if problems:
        raise ConfigError(str(path), problems)
    return Config(
        path=path,
        server=doc.server,
        defaults=doc.defaults,
        modules=modules,
        jobs=tuple(builder.jobs),
        watched_files=tuple(builder.watched),
        secrets=SecretStore(path.parent, environ),
    )


def _build_modules(doc: Document, problems: list[str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for name, table in doc.modules.items():
        where = f"modules.{name}"
        if not _LABEL_NAME.fullmatch(name.replace("-", "_")):
            problems.append(f'{where}: invalid module name "{name}"')
            continue
        body = dict(table)
        protocol = body.pop("probe", None)
        if not isinstance(protocol, str):
            problems.append(f'{where}: missing key "probe" (one of {", ".join(sorted(PROBES))})')
            continue
        spec = PROBES.get(protocol)
        if spec is None:
            hint = suggest(protocol, list(PROBES))
            problems.append(f'{where}.probe: unknown probe "{protocol}"{hint}')
            continue
        timeout: float | None = None
        if "timeout" in body:
            try:
                timeout = parse_duration(body.pop("timeout"))
            except ValueError as exc:
                problems.append(f"{where}.timeout: {exc}")
                continue
        try:
            settings = spec.settings.model_validate(body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, spec.settings, ("modules", name))
            continue
        modules[name] = Module(name, spec, settings, timeout)
    return modules


def parse_target(module: Module, raw: str) -> Target:
    """The module's own target syntax, or ``host[:port]`` with the module's port."""
    if module.spec.parse_target is not None:
        return module.spec.parse_target(raw, module.settings)
    port = getattr(module.settings, "port", None) or module.spec.default_port
    return parse_host_port(raw, port)


def adhoc_job(
    cfg: Config | None,
    module: str,
    target: str,
    *,
    overrides: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> JobSpec:
    """A job for one run outside the schedule (CLI ``probe`` and ``scan``, ``/probe``).

    ``module`` is a configured module or a probe name (its defaults); ``overrides`` replace
    settings. Raises ValueError with the problem.
    """
    modules = cfg.modules if cfg is not None else {}
    mod = module_for(module, modules)
    if mod is None:
        hint = suggest(module, list(modules) or list(PROBES))
        raise ValueError(f'unknown module "{module}"{hint}')
    if overrides:
        merged = {**mod.settings.model_dump(exclude_unset=True), **overrides}
        try:
            settings = mod.spec.settings.model_validate(merged)
        except ValidationError as exc:
            raise ValueError("; ".join(pydantic_problems(exc, mod.spec.settings))) from None
        mod = Module(mod.name, mod.spec, settings, mod.timeout)
    defaults = cfg.defaults if cfg is not None else DefaultsSection()
    return JobSpec(
        module=mod.name,
        target=parse_target(mod, target),
        spec=mod.spec,
        settings=mod.settings,
        interval=defaults.interval,
        timeout=timeout or mod.timeout or defaults.timeout,
        labels=(),
        group=None,
    )


def module_for(name: str, modules: dict[str, Module]) -> Module | None:
    """A configured module, or a protocol's defaults when no module has that name."""
    if name in modules:
        return modules[name]
    spec = PROBES.get(name)
    if spec is None:
        return None
    return Module(name, spec, spec.settings(), None)


class _JobBuilder:
    """Expands groups (hosts x modules) and single probes into jobs, collecting problems."""

    def __init__(
        self, doc: Document, modules: dict[str, Module], base: Path, problems: list[str]
    ) -> None:
        self.doc = doc
        self.modules = modules
        self.base = base
        self.problems = problems
        self.jobs: list[JobSpec] = []
        self.watched: list[Path] = []
        self._seen: dict[tuple[str, str], str] = {}
        # The jobs of a group share its labels: one tuple per distinct label set.
        self._label_sets: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}

    def build(self) -> None:
        for i, group in enumerate(self.doc.groups):
            self._group(i, group)
        for i, entry in enumerate(self.doc.probes):
            where = f"probes[{i}]"
            module = self._module(entry.module, f"{where}.module")
            if module is not None:
                self._job(
                    module, entry.target, dict(entry.labels), layer=entry, group=None, where=where
                )

    def _module(self, name: str, where: str) -> Module | None:
        module = self.modules.get(name)
        if module is None:
            hint = suggest(name, list(self.modules))
            self.problems.append(f'{where}: unknown module "{name}"{hint}')
        return module

    def _group(self, i: int, group: GroupSection) -> None:
        where = f"groups[{i}]"
        mods = [self._module(m, f"{where}.modules[{j}]") for j, m in enumerate(group.modules)]
        hosts: list[tuple[str, dict[str, str], str]] = [
            (h, {}, f"{where}.hosts[{j}]") for j, h in enumerate(group.hosts)
        ]
        if group.hosts_file is not None:
            path = self.base / group.hosts_file
            self.watched.append(path)
            try:
                for host, line in read_hosts_file(path):
                    hosts.append((host, {}, f"{where}.hosts_file ({group.hosts_file}:{line})"))
            except TargetFileError as exc:
                self.problems += [f"{where}.hosts_file: {p}" for p in exc.problems]
        for j, pattern in enumerate(group.file_sd):
            self.watched.append(self.base / pattern)
            try:
                for path in expand_file_sd(self.base, pattern):
                    for host, labels, at in read_file_sd(path):
                        hosts.append((host, labels, f"{where}.file_sd[{j}] ({at})"))
            except TargetFileError as exc:
                self.problems += [f"{where}.file_sd[{j}]: {p}" for p in exc.problems]
        if not hosts and group.hosts_file is None and not group.file_sd:
            self.problems.append(f'{where}: no targets (set "hosts", "hosts_file" or "file_sd")')
        for module in mods:
            if module is None:
                continue
            for host, labels, at in hosts:
                bad = [k for k in labels if k in RESERVED_LABELS or k.startswith("__")]
                extra = {k: v for k, v in labels.items() if k not in bad}
                self._job(
                    module, host, {**group.labels, **extra}, layer=group, group=group.name, where=at
                )

    def _job(
        self,
        module: Module,
        raw: str,
        labels: dict[str, str],
        *,
        layer: GroupSection | ProbeSection,
        group: str | None,
        where: str,
    ) -> None:
        try:
            target = parse_target(module, raw)
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")
            return
        interval = layer.interval or self.doc.defaults.interval
        timeout = layer.timeout or module.timeout or self.doc.defaults.timeout
        if timeout >= interval:
            self.problems.append(
                f"{where}: timeout {format_duration(timeout)} must be shorter than "
                f"interval {format_duration(interval)} (module {module.name})"
            )
            return
        problem = module.settings.job_problem(timeout)
        if problem is not None:
            self.problems.append(f"{where}: {problem} (module {module.name})")
            return
        key = (module.name, target.raw)
        if key in self._seen:
            self.problems.append(
                f'{where}: duplicate job (module "{module.name}", target "{target.raw}"), '
                f"first defined at {self._seen[key]}"
            )
            return
        self._seen[key] = where
        label_set = tuple(sorted(labels.items()))
        label_set = self._label_sets.setdefault(label_set, label_set)
        self.jobs.append(
            JobSpec(
                module=module.name,
                target=target,
                spec=module.spec,
                settings=module.settings,
                interval=interval,
                timeout=timeout,
                labels=label_set,
                group=group,
            )
        )
