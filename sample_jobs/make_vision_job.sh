#!/usr/bin/env bash
# Regenerate the sample vision job: draw four small product-like PNGs with pure Python
# (zlib + struct, no Pillow) into sample_jobs/images/, then build sample_jobs/vision.jsonl
# from them with `batchproc jobs-from-images`. Deterministic: same bytes every time.
set -euo pipefail
BIN=${1:-.venv/bin}
cd "$(dirname "$0")/.."

"$BIN/python" - <<'EOF'
import struct, zlib
from pathlib import Path

def png(path, width, height, pixel):
    """An 8-bit RGB PNG; pixel(x, y) -> (r, g, b)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + chunk(b"IEND", b""))

root = Path("sample_jobs/images")
png(root / "mug-red.png", 64, 64, lambda x, y: (200, 30, 40))
png(root / "poster-sunset.png", 300, 200,
    lambda x, y: (255, 140 - y * 100 // 200, 60 + y * 120 // 200))
png(root / "tiles-checker.png", 300, 200,
    lambda x, y: (240, 240, 230) if (x // 25 + y // 25) % 2 else (40, 60, 90))
png(root / "shoes" / "sneaker-teal.png", 64, 64,
    lambda x, y: (0, 128 + (x + y), 128 + (x + y) // 2))
EOF

"$BIN/batchproc" jobs-from-images sample_jobs/images \
    --prompt "Write a one-sentence SEO meta description for this product image." \
    --model gpt-4o-mini --detail low --max-tokens 60 --output sample_jobs/vision.jsonl
