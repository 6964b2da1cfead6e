from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probed import config
from probed.config import ConfigError
from probed.durations import parse_duration
from probed.secrets import SecretError, SecretRef, SecretStore

HERE = Path(__file__).parent
INVALID = sorted((HERE / "configs" / "invalid").glob("*.toml"))
ROOT = HERE.parent


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} needs an '# expect:' first line"
    return first.removeprefix("# expect: ").replace("{dir}", str(path.parent))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_names_path_and_problem(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    expected = f"{path}: {_expected(path)}"
    assert any(line.startswith(expected) for line in message.splitlines()), message


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[modules.a]\nprobe = "tcp"\nprot = 1\n[modules.b]\nprobe = "tpc"\n'
        '[[probes]]\nmodule = "c"\ntarget = "h:1"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert len(info.value.problems) == 3, info.value.problems


def test_shipped_probes_toml_loads() -> None:
    cfg = config.load(ROOT / "probes.toml")
    assert cfg.jobs
    assert {job.module for job in cfg.jobs} <= set(cfg.modules)
    text = (ROOT / "probes.toml").read_text()
    # Secrets are never inline in the shipped example.
    assert not re.search(r"^\s*password\s*=\s*\"", text, re.MULTILINE)


def test_groups_expand_hosts_files_and_file_sd() -> None:
    cfg = config.load(HERE / "configs" / "valid" / "fleet.toml")
    jobs = {(j.module, j.target.raw): j for j in cfg.jobs}
    # 2 inline + 2 from hosts.txt + 2 from web.json + 1 from extra.yml, times 2 modules, +1.
    assert len(jobs) == 7 * 2 + 1
    web = jobs[("ssh", "web1.example")]
    assert dict(web.labels) == {"env": "prod", "dc": "a"}
    assert web.target.port == 22
    assert web.interval == 30
    assert web.timeout == 5
    staging = jobs[("smtp", "db1.example")]
    assert dict(staging.labels) == {"env": "staging", "dc": "b"}
    assert staging.target.port == 25
    assert staging.timeout == 8
    assert jobs[("ssh", "mx2.example:2525")].target.port == 2525
    v6 = jobs[("ssh", "[2001:db8::1]:2222")].target
    assert (v6.host, v6.port) == ("2001:db8::1", 2222)
    single = jobs[("ssh", "backup.example:2200")]
    assert single.interval == 120
    assert dict(single.labels) == {"role": "backup"}
    assert len(cfg.watched_files) == 3
    assert "jobs per module:" in cfg.summary()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@settings(max_examples=300)
@given(st.text(max_size=12))
def test_duration_parser_gives_seconds_or_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert seconds > 0
        return
    assert "duration" in message


def test_secrets_from_file_env_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mysql").write_text("credpw")
    store = SecretStore(tmp_path, {"PW": "envpw", "CREDENTIALS_DIRECTORY": str(creds)})
    assert store.resolve(SecretRef(file="pw")).reveal() == "s3cret"
    assert store.resolve(SecretRef(env="PW")).reveal() == "envpw"
    secret = store.resolve(SecretRef(credential="mysql"))
    assert secret.reveal() == "credpw"
    assert "credpw" not in repr(secret)
    assert "credpw" not in str(secret)
    with pytest.raises(SecretError, match="environment variable NOPE is not set"):
        store.resolve(SecretRef(env="NOPE"))
    with pytest.raises(SecretError, match=r"CREDENTIALS_DIRECTORY is not set"):
        SecretStore(tmp_path, {}).resolve(SecretRef(credential="x"))
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(file="a", env="B")


def test_config_error_for_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: cannot read")):
        config.load(missing)
    if os.geteuid() != 0:  # root reads anything
        bad = tmp_path / "locked.toml"
        bad.write_text("")
        bad.chmod(0)
        with pytest.raises(ConfigError):
            config.load(bad)
