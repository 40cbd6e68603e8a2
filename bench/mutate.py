#!/usr/bin/env python3
"""mutate.py OLD NEW [SEED]: writes NEW, a copy of OLD with 1% of its 4 KiB blocks rewritten
at scattered places and 64 bytes inserted near its start (issue 18's delta case). Streams the
file in 64 MiB pieces, so a 4 GiB file needs no 4 GiB of memory."""
import random
import sys

BLOCK = 4096
PIECE = 64 << 20


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 18)
    with open(old, "rb") as src, open(new, "wb") as dst:
        src.seek(0, 2)
        size = src.tell()
        src.seek(0)
        blocks = size // BLOCK
        changed = set(rng.sample(range(blocks), blocks // 100))
        at = 0
        while at < size:
            piece = bytearray(src.read(min(PIECE, size - at)))
            for b in range(at // BLOCK, (at + len(piece)) // BLOCK):
                if b in changed:
                    o = b * BLOCK - at
                    piece[o:o + BLOCK] = rng.randbytes(BLOCK)
            if at == 0:
                piece[1000:1000] = rng.randbytes(64)
            dst.write(piece)
            at += PIECE if at + PIECE <= size else size - at


if __name__ == "__main__":
    main()
