"""gzip of a /metrics page: stdlib zlib against ISA-L (``isal``) and zlib-ng (``zlib-ng``).

    .venv/bin/python benchmarks/bench_scale.py --inproc --growth 100000 --distinct-values \\
        --save-page /tmp/page.txt
    .venv/bin/python benchmarks/bench_gzip.py /tmp/page.txt

The page is compressed as ``probed.server`` streams it: one gzip member (wbits 31), fed in
slices of about ``--slice-bytes`` cut at line ends, then flushed. Per library and level: CPU
(process time, best of ``--repeat``), compressed size, and a check that the stdlib's
``gzip.decompress`` gives the page back. Libraries that are not installed are skipped.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


# (label, module, levels): each module has compressobj(level, method, wbits) like zlib's.
CANDIDATES: list[tuple[str, str, tuple[int, ...]]] = [
    ("zlib (stdlib)", "zlib", (1, 2, 6)),
    ("zlib-ng", "zlib_ng.zlib_ng", (1, 2, 3)),
    ("isal", "isal.isal_zlib", (0, 1, 2, 3)),
]


def slices(page: bytes, size: int) -> list[bytes]:
    out, start = [], 0
    while start < len(page):
        end = page.find(b"\n", start + size)
        end = len(page) if end < 0 else end + 1
        out.append(page[start:end])
        start = end
    return out


def measure(make: Callable[[], Compressor], pieces: list[bytes], repeat: int) -> dict[str, Any]:
    best, packed = float("inf"), b""
    for _ in range(repeat):
        cpu = time.process_time()
        c = make()
        out = [c.compress(piece) for piece in pieces]
        out.append(c.flush())
        best = min(best, time.process_time() - cpu)
        packed = b"".join(out)
    return {"cpu_s": best, "bytes": len(packed), "packed": packed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="a /metrics page (bench_scale --save-page)")
    parser.add_argument("--slice-bytes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    page = args.page.read_bytes()
    pieces = slices(page, args.slice_bytes)
    print(f"page {len(page):,} bytes in {len(pieces)} slices")
    print("| library | level | CPU s | gzip MB | ratio | MB/s in | decodes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for label, name, levels in CANDIDATES:
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            print(f"| {label} | - | not installed | | | | |")
            continue
        for level in levels:

            def make(module: Any = module, level: int = level) -> Compressor:
                c: Compressor = module.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                return c

            got = measure(make, pieces, args.repeat)
            ok = gzip.decompress(got.pop("packed")) == page
            row = {"library": label, "level": level, **got, "decodes": ok}
            rows.append(row)
            print(
                f"| {label} | {level} | {got['cpu_s']:.3f} | {got['bytes'] / 1e6:.2f} "
                f"| {len(page) / got['bytes']:.1f} | {len(page) / 1e6 / got['cpu_s']:.0f} "
                f"| {'yes' if ok else 'NO'} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"page_bytes": len(page), "rows": rows}, indent=1))
    return 0 if all(r["decodes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
