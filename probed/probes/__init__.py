"""PROBES: the one registry that names every protocol."""

from __future__ import annotations

from probed.probes import (
    backup,
    ftp,
    heartbleed,
    http,
    imap,
    mailflow,
    mysql,
    pop3,
    smtp,
    ssh,
    tcp,
    tls,
)
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
        backup.SPEC,
        smtp.SPEC,
        pop3.SPEC,
        imap.SPEC,
        ftp.SPEC,
        mailflow.SPEC,
    )
}
