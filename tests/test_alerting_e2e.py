"""The shipped alert rules: promtool checks and unit tests, then the whole chain for real.

probed (a subprocess) probes a refused port and a Heartbleed-vulnerable peer; a real
Prometheus scrapes it and evaluates rules/probed.rules.yml (with `for:` set to 0s); a real
Alertmanager gets the alerts and posts them to a webhook receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import free_port
from tests.peers.heartbleed_server import heartbleed_server
from tests.servers.prometheus import run_prometheus_stack

ROOT = Path(__file__).parent.parent
RULES = ROOT / "rules" / "probed.rules.yml"
RULES_TEST = ROOT / "tests" / "rules" / "probed.rules.test.yml"
WAIT = 25.0  # the first scrape comes ~5.5 s after Prometheus starts


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    check = _promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    unit = _promtool("test", "rules", str(RULES_TEST))
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _alerts(message: dict[str, Any], name: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = message.get("alerts", [])
    return [a for a in alerts if a["labels"].get("alertname") == name and a["status"] == "firing"]


async def test_alerts_reach_alertmanager_and_the_webhook(tmp_path: Path) -> None:
    rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", RULES.read_text())
    assert "for: 5m" not in rules
    async with heartbleed_server("vulnerable") as bleeding:
        refused, listen = free_port(), free_port()
        cfg = tmp_path / "probes.toml"
        cfg.write_text(
            f'[server]\nlisten = "127.0.0.1:{listen}"\nshutdown_grace = "1s"\n'
            '[defaults]\ninterval = "1s"\ntimeout = "800ms"\n'
            '[modules.tcp_connect]\nprobe = "tcp"\n'
            '[modules.heartbleed]\nprobe = "heartbleed"\n'
            f'[[probes]]\nmodule = "tcp_connect"\ntarget = "127.0.0.1:{refused}"\n'
            'labels = { team = "web" }\n'
            f'[[probes]]\nmodule = "heartbleed"\ntarget = "127.0.0.1:{bleeding}"\n'
        )
        log = tmp_path / "probed.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(cfg)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        servers = contextlib.ExitStack()
        try:
            # The fixtures block while servers start and while waiting: keep them off the
            # loop, which serves the Heartbleed peer.
            stack = await asyncio.to_thread(
                servers.enter_context,
                run_prometheus_stack(rules=rules, extra_targets=[f"127.0.0.1:{listen}"]),
            )
            hook = stack.webhook
            failed = await asyncio.to_thread(
                hook.wait_for_message, lambda m: bool(_alerts(m, "ProbeFailed")), WAIT
            )
            bled = await asyncio.to_thread(
                hook.wait_for_message, lambda m: bool(_alerts(m, "HeartbleedVulnerable")), WAIT
            )
            firing = {
                a["labels"]["alertname"]
                for m in hook.messages()
                for a in m["alerts"]
                if a["status"] == "firing"
            }
        finally:
            await asyncio.to_thread(servers.close)
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 10)
                assert code == 0, log.read_text()[-3000:]

    (alert,) = _alerts(failed, "ProbeFailed")  # the vulnerable job has its own alert
    assert failed["receiver"] == "hook"
    labels = alert["labels"]
    assert labels["module"] == "tcp_connect"
    assert labels["target"] == f"127.0.0.1:{refused}"
    assert labels["team"] == "web"
    assert labels["job"] == "probed"
    assert labels["instance"] == f"127.0.0.1:{listen}"
    assert labels["severity"] == "critical"
    assert alert["annotations"]["reason"] == "connect_refused"
    assert alert["annotations"]["summary"] == (
        f"tcp_connect check of 127.0.0.1:{refused} is failing"
    )

    (alert,) = _alerts(bled, "HeartbleedVulnerable")
    assert alert["labels"]["module"] == "heartbleed"
    assert alert["labels"]["target"] == f"127.0.0.1:{bleeding}"
    assert alert["labels"]["severity"] == "critical"
    assert "CVE-2014-0160" in alert["annotations"]["summary"]
    # Nothing else fired: probed is up, reloads fine, has no internal errors, no lag.
    assert firing == {"ProbeFailed", "HeartbleedVulnerable"}
