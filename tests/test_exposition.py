"""The per-job /metrics cache: jobs of several probe types sharing families, families that
come and go between runs, removed jobs and reused slots. The page is checked with
prometheus-client's parser and for Prometheus' grouping rule (each family's lines together,
its header once)."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from probed.exposition import Exposition, SelfMetrics, job_labels
from probed.probes import PROBES
from probed.probes.base import Reason
from probed.probes.tlsfacts import TLS_VERSION
from probed.results import Outcome

HTTP, TCP = PROBES["http"], PROBES["tcp"]


def _outcome(ok: bool, *, tls: bool = False, started: float = 1000.0) -> Outcome:
    samples = ((TLS_VERSION, 'version="TLS 1.3"', 1.0),) if tls else ()
    reason = Reason.NONE if ok else Reason.CONNECT_REFUSED
    return Outcome(ok, reason, "", started, 0.01, (("connect", 0.001),), samples)


def _publish(exp: Exposition, module: str, target: str, outcome: Outcome) -> None:
    spec = HTTP if module.startswith("http") else TCP
    exp.publish((module, target), job_labels(module, target, ()), spec, outcome)


def _page(exp: Exposition) -> str:
    text = exp.render().decode()
    list(text_string_to_metric_families(text))  # raises on a malformed page
    seen: list[str] = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# TYPE") else None
        if name is not None:
            assert name not in seen, f"{name}: header twice"
            seen.append(name)
        elif not line.startswith("#"):
            family = re.split(r"[{ ]", line)[0]
            base = re.sub(r"_(bucket|sum|count|total|created)$", "", family)
            assert seen, f"{family} before any header"
            assert seen[-1] in {family, base}, f"{family} outside its group"
    return text


def test_families_group_across_probe_types_and_follow_each_run() -> None:
    exp = Exposition(SelfMetrics())
    for i in range(5):
        _publish(exp, "http_2xx", f"https://h{i}/", _outcome(True, tls=True))
        _publish(exp, "banner", f"h{i}:22", _outcome(True))
    page = _page(exp)
    assert page.count('probe_success{module="http_2xx"') == 5
    assert page.count('probe_success{module="banner"') == 5
    assert page.count("probe_tls_version_info{") == 5

    # A run that no longer has a family drops its line; the family stays for the others.
    _publish(exp, "http_2xx", "https://h0/", _outcome(False))
    page = _page(exp)
    assert 'probe_tls_version_info{module="http_2xx",target="https://h0/"' not in page
    assert page.count("probe_tls_version_info{") == 4
    assert (
        'probe_failure_info{module="http_2xx",target="https://h0/",reason="connect_refused"}'
        in (page)
    )

    # When no job has a family any more, its header goes too.
    for i in range(5):
        _publish(exp, "http_2xx", f"https://h{i}/", _outcome(False))
    assert "probe_tls_version_info" not in _page(exp)


def test_removed_jobs_leave_and_their_slots_are_reused() -> None:
    exp = Exposition(SelfMetrics())
    for i in range(10):
        _publish(exp, "banner", f"h{i}:22", _outcome(True, started=1000.0 + i))
    for i in range(0, 10, 2):
        exp.remove(("banner", f"h{i}:22"))
        assert ("banner", f"h{i}:22") not in exp
    page = _page(exp)
    assert page.count("probe_success{") == 5
    assert 'target="h0:22"' not in page
    for i in range(3):
        _publish(exp, "banner", f"new{i}:22", _outcome(False, started=2000.0 + i))
    page = _page(exp)
    assert page.count("probe_success{") == 8
    for i in range(1, 10, 2):
        assert (
            f'probe_last_run_timestamp_seconds{{module="banner",target="h{i}:22"}} {1000 + i}'
            in (page)
        )
    for i in range(3):
        assert f'probe_success{{module="banner",target="new{i}:22"}} 0' in page
    exp.remove(("banner", "nothing:22"))  # unknown: no error


def test_a_module_that_changes_probe_type_keeps_one_set_of_lines() -> None:
    exp = Exposition(SelfMetrics())
    _publish(exp, "banner", "h:22", _outcome(True))
    exp.publish(("banner", "h:22"), job_labels("banner", "h:22", ()), HTTP, _outcome(True))
    page = _page(exp)
    assert page.count('probe_success{module="banner",target="h:22"}') == 1
    assert "probe_tcp_duration_seconds" not in page
    assert "probe_http_duration_seconds" in page
