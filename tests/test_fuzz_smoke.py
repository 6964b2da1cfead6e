"""The atheris harnesses in fuzz/ run: a few seconds each, no finding."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
HARNESSES = sorted(FUZZ.glob("fuzz_*.py"))


def test_harnesses_exist() -> None:
    assert {path.name for path in HARNESSES} >= {"fuzz_tls.py", "fuzz_mysql.py", "fuzz_http.py"}


@pytest.mark.parametrize("harness", HARNESSES, ids=[path.stem for path in HARNESSES])
def test_harness_runs_without_a_finding(harness: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not importable here (pip install atheris: Linux x86_64 wheels)")
    result = subprocess.run(
        [sys.executable, str(harness), "-max_total_time=3", "-rss_limit_mb=1024"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # crash-* files, if any, land here
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done " in result.stderr
