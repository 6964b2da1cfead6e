"""Reload when the host files or file_sd files a config reads change (mtime, size, or
the set of files a glob matches), the way Prometheus' file_sd notices new files."""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

Snapshot = tuple[tuple[str, int, int], ...]


def snapshot(patterns: Sequence[Path]) -> Snapshot:
    """(path, mtime_ns, size) of every file the patterns name; missing files count too."""
    entries: list[tuple[str, int, int]] = []
    for pattern in patterns:
        text = str(pattern)
        paths = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                entries.append((path, -1, -1))
            else:
                entries.append((path, st.st_mtime_ns, st.st_size))
    return tuple(entries)


async def watch(
    patterns: Callable[[], Sequence[Path]],
    on_change: Callable[[], Awaitable[object]],
    interval: Callable[[], float],
) -> None:
    """Poll forever; call ``on_change`` when the snapshot differs. Stat and glob run in a
    thread so a slow file system never stalls the event loop."""
    loop = asyncio.get_running_loop()
    baseline = list(patterns())
    current = await loop.run_in_executor(None, snapshot, baseline)
    while True:
        await asyncio.sleep(interval())
        watched = list(patterns())
        new = await loop.run_in_executor(None, snapshot, watched)
        if watched != baseline:
            # A reload from elsewhere (SIGHUP, POST /-/reload) switched to other files: they
            # were just read, so they are the new baseline, not a change.
            baseline, current = watched, new
        elif new != current:
            await on_change()
            # Compare against what the reloaded config reads now.
            baseline = list(patterns())
            current = await loop.run_in_executor(None, snapshot, baseline)
