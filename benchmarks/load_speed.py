"""Where the first run's load phase goes: reading the per-video files, or the work on them.

    python benchmarks/load_speed.py                       # LLP scale (the data of speed.py)
    python benchmarks/load_speed.py --train 2000 --val 100 --test 100 --threads 1 2

The first run at LLP scale builds the packed cache from 35,547 per-video .npy files (7.7 GB),
and its stage-1 load phase took 8.6-9.2 s on the eighth session's H200 machine (16 cores), where
reading them in parallel with the work done per file would, from CPU time alone, take about 1 s.
This times, on the train split's res152 files (the bulk of the bytes), with the page cache
emptied of them first (posix_fadvise DONTNEED after a sync: no root needed) and then full:
  - reading the raw bytes only, with N threads (the disk's or the page cache's rate);
  - what `features.load_split` does per file (read, header, finite check, segment means), with
    N threads;
  - `features.load_split` itself on the whole split (all three modalities, no cache written).
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from avvp import features, llp  # noqa: E402

import speed  # noqa: E402  (benchmarks/, next to this script: its LLP-sized random data)


def evict(paths):
    """Drop the page-cache pages of `paths` (clean after the sync), so the next read goes to disk."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bytes(path):
    with open(path, "rb") as f:
        buf = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
        f.readinto(memoryview(buf))
    return buf.nbytes


def timed(fn, items, threads):
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        out = list(ex.map(fn, items))
    return time.perf_counter() - t, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/avvp_speed", help="data of speed.py (made if missing)")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=649)
    p.add_argument("--test", type=int, default=1200)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16, 32],
                   help="thread counts to time (load_split uses min(16, cores))")
    args = p.parse_args()

    data, feats = speed.make_data(Path(args.workdir), args.train, args.val, args.test)
    names = llp.read_weak(data / llp.WEAK_FILES["train"]).filenames
    folder = str(feats / "res152")
    paths = [features.feature_path(folder, n) for n in names]
    shape = features.MODALITIES["video"][1]
    arr = np.empty((len(names), 10, shape[1]), dtype=np.float32)  # (N, 10, 2048), as pool_frames

    def work(i):  # what load_split does for one res152 file
        arr[i] = features.segment_means(features.load_feature(folder, names[i], shape))

    gb = sum(os.path.getsize(q) for q in paths) / 1e9
    print(f"{len(paths)} train res152 files, {gb:.2f} GB; cores {os.cpu_count()}")
    features.load_feature(folder, names[0], shape)  # learn the .npy header once, as a run does
    for threads in args.threads:
        for state in ("cold", "warm"):
            if state == "cold":
                evict(paths)
            s, _ = timed(read_bytes, paths, threads)
            if state == "cold":
                evict(paths)
            w, _ = timed(work, range(len(paths)), threads)
            print(f"threads {threads:3d}, page cache {state}: read only {s:6.2f} s ({gb / s:5.2f} GB/s) | "
                  f"read + check + segment means {w:6.2f} s ({1e6 * w / len(paths):6.1f} us/file)", flush=True)
    dirs = features.modality_dirs(str(feats))
    for state in ("cold", "warm"):
        if state == "cold":
            evict([features.feature_path(d, n) for d in dirs.values() for n in names])
        t = time.perf_counter()
        features.load_split(dirs, names, progress=False, pool_frames=True, cache=False)
        print(f"features.load_split, train split, 3 modalities, no cache, page cache {state}: "
              f"{time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
