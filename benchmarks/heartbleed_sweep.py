"""Heartbleed sweep: probed scan against nmap ssl-heartbleed and testssl.sh, on one fleet.

    .venv/bin/python benchmarks/heartbleed_sweep.py --targets 1000

One run: a loopback fleet of test peers (``heartbleed_fleet.py``, the test suite's
``tests.peers.heartbleed_server`` in many modes, vulnerable and not, in known proportions,
one address of 127.2.0.0/16 per target) is started, the truth table written, and then, one
after the other, the fleet is swept by ``probed scan heartbleed``, by one batched nmap run
(``--script ssl-heartbleed``) and by testssl.sh (``-H``, on a sample of every case because it
costs seconds of CPU per target). The run prints a correctness table per case (truth against
each tool's verdict), the CPU and wall time of each tool, the ratios, and writes every raw
output under ``benchmarks/out/heartbleed-<stamp>/`` plus a summary
``benchmarks/out/heartbleed-<stamp>.json``.

Network: the sweep re-executes itself in a fresh network namespace that holds only ``lo``
(``unshare --net``), so no tool can send a packet beyond 127.0.0.0/8 even by accident (for
instance testssl.sh's reverse DNS, which is also switched off with ``--nodns none``).
Every wait is bounded: the fleet exits by itself, each tool run has a deadline after which it
is killed, and the testssl.sh pool is bounded in size and time.

CPU accounting: ``getrusage(RUSAGE_CHILDREN)`` deltas around each tool's processes, with this
process a child subreaper so that descendants a tool leaves behind are reaped and counted
too. The fleet is a child that is only reaped at the end, so it is never in those deltas;
its own CPU per phase is read from /proc and reported separately, charged to no tool.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import procstat

ROOT: Final = Path(__file__).resolve().parent.parent
OUT_DIR: Final = ROOT / "benchmarks" / "out"
NETNS_ENV: Final = "HEARTBLEED_SWEEP_IN_NETNS"
PLAIN_PORT: Final = 443
EXIT_INCOMPLETE: Final = 3  # probed scan: some target could not be checked
SMTP_PORT: Final = 25
TLS12, TLS11 = 0x0303, 0x0302

VULNERABLE, NOT_VULNERABLE, HOSTILE = "vulnerable", "not vulnerable", "hostile"
# Normalised tool verdicts.
V_VULN, V_OK, V_INCONCLUSIVE, V_NONE = "vulnerable", "not vulnerable", "inconclusive", "no verdict"
# Scores.
RIGHT, FALSE_NEG, FALSE_POS, ERROR = "right", "false negative", "false positive", "error"


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of endpoint in the fleet, with its truth and its share of the targets."""

    name: str
    mode: str
    truth: str
    weight: float
    starttls: str | None = None
    max_version: int = TLS12
    heartbeat_extension: bool = True
    client_auth: bool = False
    what: str = ""


# 30 % vulnerable, 57 % not vulnerable, 13 % hostile ("not vulnerable / cannot check": any
# verdict but "vulnerable" is right).
CASES: Final = (
    Case("vulnerable", "vulnerable", VULNERABLE, 0.10, what="OpenSSL 1.0.1f"),
    Case(
        "vulnerable_no_ext",
        "vulnerable",
        VULNERABLE,
        0.02,
        heartbeat_extension=False,
        what="1.0.1f, heartbeat extension not echoed in the ServerHello",
    ),
    Case(
        "vulnerable_tls11",
        "vulnerable",
        VULNERABLE,
        0.02,
        max_version=TLS11,
        what="1.0.1f capped at TLS 1.1 (answers a 1.2 hello with 1.1)",
    ),
    Case(
        "vulnerable_client_auth",
        "vulnerable",
        VULNERABLE,
        0.01,
        client_auth=True,
        what="1.0.1f sending a CertificateRequest",
    ),
    Case("big_cert", "big_cert", VULNERABLE, 0.03, what="1.0.1f, 70 kB certificate flight"),
    Case("coalesced", "coalesced", VULNERABLE, 0.03, what="1.0.1f, whole flight in one record"),
    Case("split", "split", VULNERABLE, 0.03, what="1.0.1f, flight cut into 1-40 byte records"),
    Case(
        "tls10_only",
        "tls10_only",
        VULNERABLE,
        0.03,
        what="1.0.1f, alert protocol_version to anything above TLS 1.0",
    ),
    Case(
        "smtp_vulnerable",
        "vulnerable",
        VULNERABLE,
        0.03,
        starttls="smtp",
        what="1.0.1f behind Exim-style SMTP STARTTLS (EHLO required), port 25",
    ),
    Case("patched", "patched", NOT_VULNERABLE, 0.18, what="OpenSSL 1.0.1g+"),
    Case(
        "patched_tls11",
        "patched",
        NOT_VULNERABLE,
        0.02,
        max_version=TLS11,
        what="1.0.1g capped at TLS 1.1",
    ),
    Case(
        "patched_client_auth",
        "patched",
        NOT_VULNERABLE,
        0.02,
        client_auth=True,
        what="1.0.1g sending a CertificateRequest",
    ),
    Case("gnutls", "gnutls", NOT_VULNERABLE, 0.10, what="GnuTLS: alert 10 to an early heartbeat"),
    Case("no_heartbeat", "no_heartbeat", NOT_VULNERABLE, 0.13, what="modern server, no ext 15"),
    Case(
        "plaintext_oops",
        "plaintext_oops",
        NOT_VULNERABLE,
        0.04,
        what='vsftpd-like "500 OOPS" plaintext after the handshake',
    ),
    Case(
        "echo_wrong",
        "echo_wrong",
        NOT_VULNERABLE,
        0.05,
        what="a heartbeat response that is not our payload",
    ),
    Case(
        "smtp_patched",
        "patched",
        NOT_VULNERABLE,
        0.03,
        starttls="smtp",
        what="1.0.1g behind SMTP STARTTLS, port 25",
    ),
    Case("stall", "stall", HOSTILE, 0.03, what="accepts, reads, never answers"),
    Case("close", "close", HOSTILE, 0.04, what="closes after the ClientHello"),
    Case("garbage", "garbage", HOSTILE, 0.04, what="512 random non-TLS bytes"),
    Case(
        "endless_heartbeat",
        "endless_heartbeat",
        HOSTILE,
        0.02,
        what="a heartbeat header of length 0xffff, then a drip of random bytes",
    ),
)


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    case: Case

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# -- the plan -----------------------------------------------------------------------------------


def case_counts(total: int, cases: Sequence[Case] = CASES) -> dict[str, int]:
    """Split ``total`` by weight (largest remainder), at least one target per case."""
    if total < len(cases):
        raise ValueError(f"--targets must be at least {len(cases)} (one per case)")
    weight_sum = sum(c.weight for c in cases)
    exact = {c.name: total * c.weight / weight_sum for c in cases}
    counts = {name: max(1, int(value)) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - int(exact[name]), reverse=True)
    index = 0
    while sum(counts.values()) < total:
        counts[by_remainder[index % len(cases)]] += 1
        index += 1
    while sum(counts.values()) > total:  # only when many cases were raised to one
        largest = max(counts, key=lambda name: counts[name])
        counts[largest] -= 1
    return counts


def host_address(index: int) -> str:
    """The index-th target address: 127.2.0.1, 127.2.0.2 ... 127.2.0.250, 127.2.1.1 ..."""
    if not 0 <= index < 250 * 256:
        raise ValueError("too many targets for 127.2.0.0/16")
    return f"127.2.{index // 250}.{index % 250 + 1}"


def build_plan(total: int, seed: int) -> list[Target]:
    """Targets in address order; cases are shuffled over the addresses with a fixed seed."""
    by_name = {c.name: c for c in CASES}
    cases = [by_name[name] for name, n in case_counts(total).items() for _ in range(n)]
    random.Random(seed).shuffle(cases)
    return [
        Target(host_address(i), SMTP_PORT if case.starttls == "smtp" else PLAIN_PORT, case)
        for i, case in enumerate(cases)
    ]


def fleet_entry(target: Target) -> dict[str, Any]:
    c = target.case
    return {
        "host": target.host,
        "port": target.port,
        "mode": c.mode,
        "starttls": c.starttls,
        "max_version": c.max_version,
        "heartbeat_extension": c.heartbeat_extension,
        "client_auth": c.client_auth,
    }


def sample(plan: Sequence[Target], per_case: int) -> list[Target]:
    """The first ``per_case`` targets of every case, in plan order."""
    seen: Counter[str] = Counter()
    out = []
    for target in plan:
        if seen[target.case.name] < per_case:
            seen[target.case.name] += 1
            out.append(target)
    return out


# -- processes and their cost -------------------------------------------------------------------


def children_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of every reaped descendant so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def become_subreaper() -> bool:
    """Make orphaned descendants our children, so their CPU is counted when we reap them."""
    pr_set_child_subreaper = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children_of_self() -> list[int]:
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            match = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
            if match and int(match.group(1)) == me:
                pids.append(int(entry.name))
    return pids


def reap_leftovers(keep: set[int], timeout: float = 10.0) -> int:
    """Wait (bounded) for descendants a tool left behind; kill them at the deadline."""
    deadline = time.monotonic() + timeout
    reaped = 0
    while True:
        pids = [pid for pid in _children_of_self() if pid not in keep]
        if not pids:
            return reaped
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                reaped += done == pid
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                    reaped += 1
            return reaped
        time.sleep(0.05)


@dataclass(slots=True)
class Cost:
    """What one tool phase cost: wall seconds and CPU seconds of the tool (all descendants)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    fleet_cpu_s: float = 0.0
    processes: int = 0
    killed: int = 0

    def add(self, other: Cost) -> None:
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.cpu_user_s += other.cpu_user_s
        self.cpu_sys_s += other.cpu_sys_s
        self.fleet_cpu_s += other.fleet_cpu_s
        self.processes += other.processes
        self.killed += other.killed


@contextlib.contextmanager
def measured(fleet_pid: int, cost: Cost) -> Iterator[None]:
    fleet_before = procstat.process_cpu(fleet_pid)
    user_before, sys_before = children_cpu()
    wall_before = time.monotonic()
    try:
        yield
    finally:
        reap_leftovers({fleet_pid})
        cost.wall_s += time.monotonic() - wall_before
        user_after, sys_after = children_cpu()
        cost.cpu_user_s += user_after - user_before
        cost.cpu_sys_s += sys_after - sys_before
        cost.cpu_s += (user_after - user_before) + (sys_after - sys_before)
        cost.fleet_cpu_s += procstat.process_cpu(fleet_pid).total - fleet_before.total


def run_tool(
    argv: Sequence[str], stdout: Path, stderr: Path, deadline_s: float
) -> tuple[int, bool]:
    """Run one tool process to completion (killed at the deadline). Returns (rc, killed)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=deadline_s), False
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True


# -- tools ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    verdict: str  # V_*
    said: str  # the tool's own words
    seconds: float | None = None


def probed_verdict(row: dict[str, Any]) -> Verdict:
    raw = str(row.get("verdict", ""))
    verdict = {"VULNERABLE": V_VULN, "ok": V_OK, "inconclusive": V_INCONCLUSIVE}.get(raw, V_NONE)
    words = [raw, str(row.get("reason", "")), str(row.get("response", ""))]
    if row.get("detail"):
        words.append(str(row["detail"]))
    return Verdict(verdict, " / ".join(w for w in words if w), float(row.get("seconds", 0.0)))


@dataclass(slots=True)
class ToolRun:
    name: str
    targets: list[str]
    cost: Cost = field(default_factory=Cost)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def startup_sample(
    name: str, i: int, argv: Sequence[str], out: Path, fleet_pid: int, *, startup: Cost
) -> str | None:
    """One sample of a sweeper's fixed cost: the same command over one closed loopback port
    (refused at once). Returns a note when the run did not give a one-row report."""
    stdout = out / f"{name}-startup-{i}.json"
    with measured(fleet_pid, startup):
        rc, _ = run_tool(argv, stdout, out / f"{name}-startup-{i}.err", 60)
    startup.processes += 1
    if rc not in {0, EXIT_INCOMPLETE} or not stdout.read_text().strip().startswith("["):
        return f"start-up run {i}: exit status {rc}, not a one-row report"
    return None


def read_rows(stdout: Path, notes: list[str], label: str) -> dict[str, Verdict]:
    try:
        rows = json.loads(stdout.read_text() or "[]")
    except json.JSONDecodeError:
        notes.append(f"{label}: output is not JSON")
        return {}
    return {str(row["target"]): probed_verdict(row) for row in rows}


def sweeper_argv(args: argparse.Namespace, name: str) -> tuple[list[str], list[str]]:
    """The command of ``probed scan`` or of the floor, and what follows its targets.

    Both sweep every target in one process: probed's ``starttls = "auto"`` and the floor
    pick SMTP STARTTLS for port 25 themselves."""
    if name == "floor":
        floor = [sys.executable, str(ROOT / "benchmarks" / "heartbleed_floor.py")]
        return floor, ["--concurrency", str(args.concurrency)]
    tail = ["--format", "json", "--concurrency", str(args.concurrency)]
    if args.probed_timeout:
        tail += ["--timeout", args.probed_timeout]
    return [str(args.probed), "scan", "heartbleed"], tail


def run_sweeper(
    name: str,
    args: argparse.Namespace,
    plan: Sequence[Target],
    out: Path,
    fleet_pid: int,
) -> tuple[ToolRun, Cost]:
    """``probed scan`` (or the floor) over every target, ``--probed-runs`` times; plus the
    start-up cost of one process, from ``--startup-runs`` samples."""
    head, tail = sweeper_argv(args, name)
    hosts = out / f"{name}-hosts.txt"
    hosts.write_text("".join(f"{t.address}\n" for t in plan))
    closed = out / "closed-port.txt"
    closed.write_text("127.0.0.1:1\n")
    result = ToolRun(name, [t.address for t in plan])
    startup = Cost()
    per_run: list[Cost] = []
    # Start-up samples and sweeps alternate, so that drifts of this machine hit both alike.
    for i in range(max(args.probed_runs, args.startup_runs)):
        if i < args.startup_runs:
            argv = [*head, "--hosts-file", str(closed), *tail]
            note = startup_sample(name, i, argv, out, fleet_pid, startup=startup)
            if note:
                result.notes.append(note)
        if i >= args.probed_runs:
            continue
        cost = Cost()
        stdout = out / f"{name}-{i}.json"
        with measured(fleet_pid, cost):
            rc, killed = run_tool(
                [*head, "--hosts-file", str(hosts), *tail], stdout, out / f"{name}-{i}.err", 600
            )
        cost.processes += 1
        cost.killed += killed
        if rc not in {0, 1, EXIT_INCOMPLETE}:
            result.notes.append(f"run {i}: exit status {rc}")
        verdicts = read_rows(stdout, result.notes, f"run {i}")
        per_run.append(cost)
        result.runs.append({"run": i, **asdict(cost)})
        if i == 0:
            result.verdicts = verdicts
            continue
        flips = [
            t
            for t, v in verdicts.items()
            if t not in result.verdicts or result.verdicts[t].verdict != v.verdict
        ]
        if flips or len(verdicts) != len(result.verdicts):
            result.notes.append(f"run {i}: verdicts differ from run 0 on {flips[:10]}")
    for field_name in ("cpu_s", "cpu_user_s", "cpu_sys_s", "wall_s", "fleet_cpu_s"):
        setattr(startup, field_name, getattr(startup, field_name) / args.startup_runs)
    # The reported cost is the run with the median CPU (its own wall time with it).
    result.cost = sorted(per_run, key=lambda c: c.cpu_s)[len(per_run) // 2]
    return result, startup


def parse_nmap(xml_path: Path) -> dict[str, Verdict]:
    """Per HOST:PORT: the ssl-heartbleed state, or why there is none."""
    verdicts: dict[str, Verdict] = {}
    if not xml_path.exists() or xml_path.stat().st_size == 0:
        return verdicts
    # nmap's own output, written by this run: trusted input.
    tree = ET.parse(xml_path)  # noqa: S314
    for host in tree.getroot().iter("host"):
        address_el = host.find("address")
        if address_el is None:
            continue
        address = address_el.get("addr", "")
        for port in host.iter("port"):
            state_el = port.find("state")
            port_state = state_el.get("state", "?") if state_el is not None else "?"
            key = f"{address}:{port.get('portid')}"
            script = port.find("script[@id='ssl-heartbleed']")
            if script is None:
                if port_state == "open":
                    verdicts[key] = Verdict(V_NONE, "open, script gave no output")
                continue
            state = ""
            for elem in script.iter("elem"):
                if elem.get("key") == "state":
                    state = (elem.text or "").strip()
            if state == "VULNERABLE":
                verdicts[key] = Verdict(V_VULN, state)
            elif state == "NOT VULNERABLE":
                verdicts[key] = Verdict(V_OK, state)
            else:
                output = script.get("output", "").strip().replace("\n", " ")[:120]
                verdicts[key] = Verdict(V_NONE, state or output or "no state")
    return verdicts


def run_nmap(
    args: argparse.Namespace, plan: Sequence[Target], out: Path, fleet_pid: int
) -> ToolRun:
    hosts = out / "nmap-hosts.txt"
    hosts.write_text("".join(f"{t.host}\n" for t in plan))
    ports = sorted({t.port for t in plan})
    xml_path = out / "nmap.xml"
    argv = [
        args.nmap,
        "-Pn",
        "-n",
        "-p",
        "T:" + ",".join(str(p) for p in ports),
        "--script",
        "ssl-heartbleed",
        # Without showall, NOT VULNERABLE is not printed and cannot be told from "no check".
        "--script-args",
        "vulns.showall",
        "-iL",
        str(hosts),
        "-oX",
        str(xml_path),
        *args.nmap_extra,
    ]
    result = ToolRun("nmap", [t.address for t in plan])
    with measured(fleet_pid, result.cost):
        rc, killed = run_tool(argv, out / "nmap.out", out / "nmap.err", args.nmap_deadline)
    result.cost.processes, result.cost.killed = 1, int(killed)
    result.runs.append({"argv": argv, "rc": rc, "killed": killed})
    if rc != 0 or killed:
        result.notes.append(f"nmap exit status {rc}{' (killed at deadline)' if killed else ''}")
    verdicts = parse_nmap(xml_path)
    for target in plan:
        result.verdicts[target.address] = verdicts.get(
            target.address, Verdict(V_NONE, "not in nmap's output")
        )
    return result


def _find_heartbleed(node: Any) -> dict[str, Any] | None:
    if isinstance(node, dict):
        if node.get("id") == "heartbleed":
            return node
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_heartbleed(child)
        if found is not None:
            return found
    return None


def parse_testssl(path: Path) -> Verdict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return Verdict(V_NONE, "no JSON written")
    finding = _find_heartbleed(doc)
    if finding is None:
        return Verdict(V_NONE, f"no heartbleed finding ({doc.get('scanTime', '?')})")
    severity = str(finding.get("severity", ""))
    text = str(finding.get("finding", ""))
    if severity in {"CRITICAL", "HIGH"} or text.startswith("VULNERABLE"):
        return Verdict(V_VULN, f"{severity}: {text}")
    if severity == "OK":
        return Verdict(V_OK, f"{severity}: {text}")
    return Verdict(V_NONE, f"{severity}: {text}")


def run_testssl(
    args: argparse.Namespace, targets: Sequence[Target], out: Path, fleet_pid: int
) -> ToolRun:
    """One testssl.sh -H per target, at most ``--testssl-parallel`` at a time."""
    tdir = out / "testssl"
    tdir.mkdir(exist_ok=True)
    result = ToolRun("testssl.sh", [t.address for t in targets])
    pending = list(targets)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Target]] = {}
    per_target_wall: dict[str, float] = {}
    phase_deadline = time.monotonic() + args.testssl_phase_deadline
    with measured(fleet_pid, result.cost):
        while pending or running:
            while pending and len(running) < args.testssl_parallel:
                target = pending.pop(0)
                stem = target.address.replace(":", "_")
                argv = [
                    args.testssl,
                    "-H",
                    "--warnings",
                    "off",  # "batch" aborts: OpenSSL cannot finish a handshake with the peer
                    "--nodns",
                    "none",
                    "--connect-timeout",
                    "5",
                    "--openssl-timeout",
                    "5",
                    "--jsonfile-pretty",
                    str(tdir / f"{stem}.json"),
                ]
                if target.case.starttls:
                    argv += ["-t", target.case.starttls]
                argv.append(target.address)
                log = (tdir / f"{stem}.log").open("wb")
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
                log.close()
                running[target.address] = (proc, time.monotonic(), target)
            time.sleep(0.05)
            now = time.monotonic()
            for address, (proc, started, _) in list(running.items()):
                late = now - started > args.testssl_deadline or now > phase_deadline
                if proc.poll() is None and not late:
                    continue
                if proc.poll() is None:
                    proc.kill()
                    result.cost.killed += 1
                    result.notes.append(f"{address}: killed after {now - started:.0f} s")
                proc.wait()
                per_target_wall[address] = now - started
                result.cost.processes += 1
                del running[address]
            if now > phase_deadline:
                for target in pending:
                    result.verdicts[target.address] = Verdict(V_NONE, "not run: phase deadline")
                pending.clear()
    for target in targets:
        stem = target.address.replace(":", "_")
        if target.address not in result.verdicts:
            verdict = parse_testssl(tdir / f"{stem}.json")
            verdict.seconds = per_target_wall.get(target.address)
            result.verdicts[target.address] = verdict
    return result


# -- scoring and reporting ----------------------------------------------------------------------


def score(truth: str, verdict: str) -> str:
    if verdict == V_VULN:
        return RIGHT if truth == VULNERABLE else FALSE_POS
    if truth == HOSTILE:
        return RIGHT  # not vulnerable / cannot check: anything but "vulnerable"
    if truth == VULNERABLE:
        return FALSE_NEG if verdict == V_OK else ERROR
    return RIGHT if verdict == V_OK else ERROR


def case_cell(run: ToolRun, targets: Sequence[Target]) -> str:
    scores = Counter(
        score(t.case.truth, run.verdicts[t.address].verdict)
        for t in targets
        if t.address in run.verdicts
    )
    total = sum(scores.values())
    if total == 0:
        return "-"
    cell = f"{scores[RIGHT]}/{total}"
    wrong = [
        f"{scores[k]} {abbr}"
        for k, abbr in ((FALSE_NEG, "FN"), (FALSE_POS, "FP"), (ERROR, "err"))
        if scores[k]
    ]
    return cell + (f" ({', '.join(wrong)})" if wrong else "")


def said_summary(run: ToolRun, targets: Sequence[Target]) -> str:
    words = Counter(run.verdicts[t.address].said for t in targets if t.address in run.verdicts)
    return "; ".join(f"{w} x{n}" if n > 1 else w for w, n in words.most_common(3))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def correctness(plan: Sequence[Target], runs: Sequence[ToolRun]) -> tuple[str, dict[str, Any]]:
    rows = []
    totals: dict[str, Counter[str]] = {r.name: Counter() for r in runs}
    for case in CASES:
        targets = [t for t in plan if t.case is case]
        row = [case.name, case.truth, str(len(targets))]
        for run in runs:
            row.append(case_cell(run, targets))
            for t in targets:
                if t.address in run.verdicts:
                    totals[run.name][score(t.case.truth, run.verdicts[t.address].verdict)] += 1
        rows.append(row)
    total_row = ["all", "", str(len(plan))]
    for run in runs:
        c = totals[run.name]
        n = sum(c.values())
        wrong = [
            f"{c[k]} {a}" for k, a in ((FALSE_NEG, "FN"), (FALSE_POS, "FP"), (ERROR, "err")) if c[k]
        ]
        total_row.append(f"{c[RIGHT]}/{n}" + (f" ({', '.join(wrong)})" if wrong else ""))
    rows.append(total_row)
    headers = ["case", "truth", "targets", *(r.name for r in runs)]
    return markdown_table(headers, rows), {k: dict(v) for k, v in totals.items()}


def words_table(plan: Sequence[Target], runs: Sequence[ToolRun]) -> str:
    rows = []
    for case in CASES:
        targets = [t for t in plan if t.case is case]
        rows.append([case.name, *(said_summary(run, targets) or "-" for run in runs)])
    return markdown_table(["case", *(f"{r.name} said" for r in runs)], rows)


def misverdicts(plan: Sequence[Target], run: ToolRun) -> list[dict[str, Any]]:
    wrong = []
    for t in plan:
        v = run.verdicts.get(t.address)
        if v is None:
            continue
        s = score(t.case.truth, v.verdict)
        if s != RIGHT:
            wrong.append({"target": t.address, "case": t.case.name, "score": s, "said": v.said})
    return wrong


def fmt_ms(seconds: float, n: int) -> str:
    return f"{1000 * seconds / n:.3f}" if n else "-"


# -- machine facts ------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unavailable"


def machine_facts(args: argparse.Namespace) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    testssl_version = "unavailable"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        text = subprocess.run(
            [args.testssl, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        match = re.search(r"testssl(?:\.sh)?\s+(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", text))
        if match:
            testssl_version = match.group(1)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "probed": _first_line([str(args.probed), "--version"]),
        "nmap": _first_line([args.nmap, "--version"]),
        "testssl.sh": testssl_version,
        "openssl": _first_line(["openssl", "version"]),
        "clock_ticks_per_s": str(procstat.CLOCK_TICKS_PER_SECOND),
    }


# -- the fleet ----------------------------------------------------------------------------------


def start_fleet(plan: Sequence[Target], out: Path, max_seconds: float) -> subprocess.Popen[str]:
    plan_path = out / "fleet-plan.json"
    plan_path.write_text(json.dumps([fleet_entry(t) for t in plan]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "heartbleed_fleet.py"),
        "--plan",
        str(plan_path),
        "--max-seconds",
        str(max_seconds),
    ]
    with (out / "fleet.err").open("wb") as err:
        fleet = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True
        )
    assert fleet.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = fleet.stdout.readline()  # the fleet prints one line, then exits or serves
        if line.startswith("READY"):
            return fleet
        if not line and fleet.poll() is not None:
            break
    fleet.kill()
    fleet.wait()
    raise SystemExit(f"fleet did not start; see {out / 'fleet.err'}")


def stop_fleet(fleet: subprocess.Popen[str]) -> None:
    if fleet.poll() is None:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--tools", default="probed,floor,nmap,testssl")
    parser.add_argument("--probed", type=Path, default=ROOT / ".venv" / "bin" / "probed")
    parser.add_argument("--concurrency", type=int, default=256, help="probed scan --concurrency")
    parser.add_argument(
        "--probed-timeout", default="", help="probed scan --timeout (default: probed's own)"
    )
    parser.add_argument("--probed-runs", type=int, default=3, help="median CPU run is reported")
    parser.add_argument("--startup-runs", type=int, default=5, help="probed start-up samples")
    parser.add_argument("--nmap", default="nmap")
    parser.add_argument("--nmap-deadline", type=float, default=900.0)
    parser.add_argument(
        "--nmap-extra", nargs="*", default=[], help="more nmap arguments (e.g. -T4)"
    )
    parser.add_argument("--testssl", default="testssl")
    parser.add_argument("--testssl-per-case", type=int, default=2, help="sample size per case")
    parser.add_argument("--testssl-parallel", type=int, default=8)
    parser.add_argument("--testssl-deadline", type=float, default=300.0, help="per target")
    parser.add_argument("--testssl-phase-deadline", type=float, default=420.0)
    parser.add_argument("--no-netns", action="store_true", help="stay in this network namespace")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/out/...")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - {"probed", "floor", "nmap", "testssl"}
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}")
    if min(args.probed_runs, args.startup_runs, args.testssl_parallel) < 1:
        parser.error("--probed-runs, --startup-runs and --testssl-parallel must be at least 1")
    return args


def enter_netns(argv: Sequence[str]) -> None:
    """Re-execute inside a new network namespace holding only loopback (root only)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("unshare(1) not found; run with --no-netns to use this namespace")
    os.environ[NETNS_ENV] = "1"
    # A fixed argument list: unshare, then this interpreter and this script.
    os.execv(  # noqa: S606
        unshare, [unshare, "--net", "--", sys.executable, str(Path(__file__)), *argv]
    )


@dataclass(slots=True)
class Sweep:
    runs: list[ToolRun] = field(default_factory=list)
    startup: dict[str, Cost] = field(default_factory=dict)  # per process, by tool
    testssl_targets: list[Target] = field(default_factory=list)
    fleet_cpu_s: float = 0.0


def run_tools(args: argparse.Namespace, plan: Sequence[Target], out: Path) -> Sweep:
    sweep = Sweep()
    fleet = start_fleet(plan, out, max_seconds=1800)
    fleet_start_cpu = procstat.process_cpu(fleet.pid).total
    try:
        for tool in args.tools:
            print(f"-- {tool} ...", flush=True)
            if tool in {"probed", "floor"}:
                run, sweep.startup[tool] = run_sweeper(tool, args, plan, out, fleet.pid)
            elif tool == "nmap":
                run = run_nmap(args, plan, out, fleet.pid)
            else:
                sweep.testssl_targets = sample(plan, args.testssl_per_case)
                run = run_testssl(args, sweep.testssl_targets, out, fleet.pid)
            sweep.runs.append(run)
            c = run.cost
            print(
                f"   {len(run.targets)} targets, wall {c.wall_s:.2f} s, "
                f"CPU {c.cpu_s:.3f} s, fleet CPU {c.fleet_cpu_s:.2f} s",
                flush=True,
            )
    finally:
        sweep.fleet_cpu_s = procstat.process_cpu(fleet.pid).total - fleet_start_cpu
        stop_fleet(fleet)
    return sweep


def cost_summary(
    sweep: Sweep, plan: Sequence[Target]
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    rows = []
    summary: dict[str, dict[str, Any]] = {}
    for run in sweep.runs:
        n = len(run.targets)
        c = run.cost
        summary[run.name] = {
            "targets": n,
            "wall_s": round(c.wall_s, 3),
            "cpu_s": round(c.cpu_s, 3),
            "cpu_user_s": round(c.cpu_user_s, 3),
            "cpu_sys_s": round(c.cpu_sys_s, 3),
            "cpu_ms_per_target": round(1000 * c.cpu_s / n, 4),
            "fleet_cpu_s": round(c.fleet_cpu_s, 3),
            "processes": c.processes,
            "killed": c.killed,
        }
        rows.append(
            [
                run.name,
                str(n),
                f"{c.wall_s:.2f}",
                f"{c.cpu_s:.3f} ({c.cpu_user_s:.2f} + {c.cpu_sys_s:.2f})",
                fmt_ms(c.cpu_s, n),
                f"{c.fleet_cpu_s:.2f}",
            ]
        )
    testssl = summary.get("testssl.sh")
    if testssl is not None:
        # An estimate, not a measurement: testssl.sh is CPU-bound (bash, openssl, hexdump),
        # so a full sweep needs at least its CPU time spread over every core.
        full = len(plan) * testssl["cpu_s"] / testssl["targets"]
        testssl["estimate_full_cpu_s"] = round(full, 1)
        testssl["estimate_full_wall_s_at_least"] = round(full / (os.cpu_count() or 1), 1)
    for run in sweep.runs:
        startup = sweep.startup.get(run.name)
        if startup is None:
            continue
        n = len(run.targets)
        marginal = run.cost.cpu_s - run.cost.processes * startup.cpu_s
        summary[run.name]["startup_cpu_s_per_process"] = round(startup.cpu_s, 3)
        summary[run.name]["processes_per_sweep"] = run.cost.processes
        summary[run.name]["cpu_ms_per_target_excluding_startup"] = round(1000 * marginal / n, 4)
        rows.append(
            [
                f"{run.name}, less {run.cost.processes} x start-up ({startup.cpu_s:.3f} s each)",
                str(n),
                "",
                f"{marginal:.3f}",
                fmt_ms(marginal, n),
                "",
            ]
        )
    return summary, rows


def ratios_and_goals(
    summary: dict[str, dict[str, Any]], plan: Sequence[Target], sweep: Sweep
) -> tuple[dict[str, float], dict[str, bool]]:
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    probed = summary.get("probed")
    if probed is None:
        return ratios, goals
    for tool in ("nmap", "testssl.sh", "floor"):
        other = summary.get(tool)
        if other is not None:
            ratios[f"{tool} / probed, CPU per target"] = round(
                other["cpu_ms_per_target"] / max(probed["cpu_ms_per_target"], 1e-9), 2
            )
    floor = summary.get("floor", {})
    key = "cpu_ms_per_target_excluding_startup"
    if key in floor and key in probed:
        ratios["probed / floor, CPU per target excluding start-up"] = round(
            probed[key] / max(floor[key], 1e-9), 2
        )
    if "nmap" in summary:
        ratios["nmap / probed, wall (same targets)"] = round(
            summary["nmap"]["wall_s"] / max(probed["wall_s"], 1e-9), 2
        )
    probed_run = next(r for r in sweep.runs if r.name == "probed")
    goals["probed: every verdict right"] = not misverdicts(plan, probed_run)
    goals["probed: <= 0.25 CPU-ms per target (all-in)"] = probed["cpu_ms_per_target"] <= 0.25
    if "cpu_ms_per_target_excluding_startup" in probed:
        goals["probed: <= 0.25 CPU-ms per target (excluding start-up)"] = (
            probed["cpu_ms_per_target_excluding_startup"] <= 0.25
        )
    if "nmap / probed, wall (same targets)" in ratios:
        goals["probed: wall >= 4x faster than nmap"] = (
            ratios["nmap / probed, wall (same targets)"] >= 4
        )
    return ratios, goals


def main(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    if not args.no_netns and os.environ.get(NETNS_ENV) != "1":
        enter_netns(raw_argv)
    if not args.no_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
    subreaper = become_subreaper()
    plan = build_plan(args.targets, args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or OUT_DIR / f"heartbleed-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    truth = [
        {"target": t.address, "case": t.case.name, "truth": t.case.truth, **fleet_entry(t)}
        for t in plan
    ]
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    facts = machine_facts(args)
    print(f"heartbleed sweep: {len(plan)} targets, raw output in {out}", flush=True)
    print("  " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)

    started = time.monotonic()
    sweep = run_tools(args, plan, out)
    runs = sweep.runs
    table, totals = correctness(plan, runs)
    said = words_table(plan, runs)
    summary, cost_rows = cost_summary(sweep, plan)
    cost_table = markdown_table(
        [
            "tool",
            "targets",
            "wall s",
            "CPU s (user + sys)",
            "CPU ms/target",
            "fleet CPU s (not charged)",
        ],
        cost_rows,
    )
    ratios, goals = ratios_and_goals(summary, plan, sweep)
    wrong_by_tool = {run.name: misverdicts(plan, run) for run in runs}

    print("\n## Correctness (right/targets; FN false negative, FP false positive, err no verdict)")
    if sweep.testssl_targets:
        print(
            f"testssl.sh ran on a sample: the first {args.testssl_per_case} targets of each case."
        )
    print(table)
    print("\n## What each tool said, per case (most common answers)\n")
    print(said)
    print("\n## Cost\n")
    print(cost_table)
    print(f"\nfleet CPU over the whole run: {sweep.fleet_cpu_s:.2f} s (charged to no tool)")
    if "testssl.sh" in summary and "estimate_full_cpu_s" in summary["testssl.sh"]:
        t = summary["testssl.sh"]
        print(
            f"testssl.sh over all {len(plan)} targets (estimate, not run): CPU "
            f"{t['estimate_full_cpu_s']:.0f} s, wall at least "
            f"{t['estimate_full_wall_s_at_least']:.0f} s on {os.cpu_count()} cores"
        )
    print("\n## Ratios\n")
    for key, value in ratios.items():
        print(f"- {key}: {value}")
    print("\n## Goals\n")
    for key, ok in goals.items():
        print(f"- {key}: {'yes' if ok else 'NO'}")
    for run in runs:
        for note in run.notes:
            print(f"note ({run.name}): {note}")
    for w in wrong_by_tool.get("probed", []):
        print(f"probed misverdict: {w['target']} ({w['case']}): {w['score']}: {w['said']}")

    probed_run = next((r for r in runs if r.name == "probed"), None)
    report = {
        "command": [sys.executable, str(Path(__file__)), *raw_argv],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": facts,
        "network_namespace": not args.no_netns,
        "child_subreaper": subreaper,
        "case_counts": case_counts(args.targets),
        "cases": [asdict(c) for c in CASES],
        "testssl_sample": [t.address for t in sweep.testssl_targets],
        "summary": summary,
        "startup": {name: asdict(cost) for name, cost in sweep.startup.items()},
        "probed_runs": probed_run.runs if probed_run else [],
        "ratios": ratios,
        "goals": goals,
        "correctness_totals": totals,
        "correctness_table": table,
        "said_table": said,
        "cost_table": cost_table,
        "fleet_cpu_s_total": round(sweep.fleet_cpu_s, 3),
        "misverdicts": wrong_by_tool,
        "notes": {run.name: run.notes for run in runs},
        "verdicts": {
            run.name: {addr: asdict(v) for addr, v in run.verdicts.items()} for run in runs
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    summary_path = out.with_suffix(".json") if args.out is None else out / "summary.json"
    summary_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nsummary: {summary_path}  (elapsed {report['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
