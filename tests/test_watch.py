"""The file watcher: a changed host file triggers a reload; a config that now reads other
files (because a reload came from elsewhere) is a new baseline, not a change."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from probed.watch import watch


async def test_a_change_reloads_and_a_switch_of_files_does_not(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("127.0.0.1:22\n")
    b.write_text("127.0.0.1:25\n")
    watched = [a]
    calls: list[int] = []

    async def on_change() -> None:
        calls.append(len(calls))

    task = asyncio.create_task(watch(lambda: watched, on_change, lambda: 0.05))
    try:
        await asyncio.sleep(0.2)
        assert calls == []
        a.write_text("127.0.0.1:22\n127.0.0.2:22\n")
        await asyncio.sleep(0.3)
        assert calls == [0], "an edited host file reloads once"

        # SIGHUP loaded a config that reads b.txt instead: nothing changed on disk since.
        watched[:] = [b]
        await asyncio.sleep(0.3)
        assert calls == [0]

        os.utime(b, ns=(0, 0))
        await asyncio.sleep(0.3)
        assert calls == [0, 1], "and b.txt is watched from then on"
    finally:
        task.cancel()
