#!/usr/bin/env python3
"""Deterministic benchmark datasets (seeded), written with plain file I/O.

usage: gen.py large DIR SIZE_BYTES | small DIR FILES DIRS FILE_BYTES | mixed DIR FILES MIN MAX SEED
"""
import math
import os
import random
import sys


def large(root, size):
    os.makedirs(root, exist_ok=True)
    block = random.Random(1).randbytes(1 << 20)
    with open(os.path.join(root, "large.bin"), "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            # Vary the content so no block repeats verbatim (defeats any dedup).
            block = block[1:] + block[:1]
            left -= n


def small(root, files, dirs, file_bytes):
    rng = random.Random(2)
    blob = rng.randbytes(file_bytes * 256)
    per_dir = files // dirs
    for d in range(dirs):
        dp = os.path.join(root, f"d{d:04}")
        os.makedirs(dp, exist_ok=True)
        for i in range(per_dir):
            off = (i % 256) * file_bytes
            with open(os.path.join(dp, f"f{i:06}"), "wb") as f:
                f.write(blob[off:off + file_bytes])


def mixed(root, files, lo, hi, seed):
    rng = random.Random(seed)
    blob = rng.randbytes(hi)
    for i in range(files):
        dp = os.path.join(root, f"d{i % 10}", f"s{i % 7}")
        os.makedirs(dp, exist_ok=True)
        size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        off = rng.randrange(0, hi - size + 1)
        with open(os.path.join(dp, f"f{i:05}.bin"), "wb") as f:
            f.write(blob[off:off + size])


def main():
    kind = sys.argv[1]
    if kind == "large":
        large(sys.argv[2], int(sys.argv[3]))
    elif kind == "small":
        small(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif kind == "mixed":
        mixed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
