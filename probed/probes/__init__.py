"""PROBES: the one registry that names every protocol."""

from __future__ import annotations

from probed.probes import heartbleed, http, imap, mysql, pop3, smtp, ssh, tcp, tls
from probed.probes.base import ProbeSpec

PROBES: dict[str, ProbeSpec] = {
    spec.name: spec
    for spec in (
        tcp.SPEC,
        heartbleed.SPEC,
        http.SPEC,
        tls.SPEC,
        ssh.SPEC,
        mysql.SPEC,
        smtp.SPEC,
        pop3.SPEC,
        imap.SPEC,
    )
}
