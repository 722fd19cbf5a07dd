"""Where the first run's load phase goes: reading the per-video files, or the work on them.

    python benchmarks/load_speed.py                       # LLP scale (the data of speed.py), res152
    python benchmarks/load_speed.py --modality audio      # the 10,000 small vggish files
    python benchmarks/load_speed.py --train 2000 --val 100 --test 100 --threads 1 2

The first run at LLP scale builds the packed cache from 35,547 per-video .npy files (7.7 GB).
Its stage-1 load phase took 8.6-9.2 s on the eighth session's H200 machine (16 cores). From CPU
time alone, reading the files in parallel with the per-file work should take about 1 s.
This times one modality of the train split (res152 by default: the bulk of the bytes) twice:
once with the page cache emptied of its files (posix_fadvise DONTNEED after a sync: no root
needed), once with it full. It reports:
  - reading the raw bytes only, with N threads (the disk's or the page cache's rate);
  - the per-file work of split loading with N threads, two ways:
      before: the loader up to the eighth session, kept here as the reference: one thread-pool
              task and a new array per file; for res152, the NaN/inf check on the (80, 2048)
              frames and the means in a temporary;
      now:    `features._fill` (tasks of READ_CHUNK files, a per-thread reused read buffer; for
              res152, the means written in place and checked there); it must give the same
              bits, and this checks that it does;
  - `features.load_split` itself on the whole train split (all three modalities, no cache written).
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


def seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/avvp_speed", help="data of speed.py (made if missing)")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=649)
    p.add_argument("--test", type=int, default=1200)
    p.add_argument("--threads", type=int, nargs="+", default=[16, 4, 8],
                   help="thread counts to time (load_split uses min(16, cores))")
    p.add_argument("--repeats", type=int, default=2, help="timings per thread count and page-cache state")
    p.add_argument("--modality", default="video", choices=list(features.MODALITIES),
                   help="which files: video = res152 (pooled, as the default frame_pool), audio = vggish, st = r2plus1d_18")
    p.add_argument("--skip_read", action="store_true", help="leave out the raw-bytes timing")
    args = p.parse_args()

    data, feats = speed.make_data(Path(args.workdir), args.train, args.val, args.test)
    names = llp.read_weak(data / llp.WEAK_FILES["train"]).filenames
    kind, shape = features.MODALITIES[args.modality]
    folder = str(feats / kind)
    paths = [features.feature_path(folder, n) for n in names]
    pool = args.modality == "video"
    before = np.empty((len(names),) + ((10, shape[1]) if pool else shape), dtype=np.float32)  # (N, 10, 2048) pooled
    now = np.empty_like(before)

    def before_one(i):  # the previous per-file work
        x = features.load_feature(folder, names[i], shape)
        before[i] = features.segment_means(x) if pool else x

    def run_before(threads):
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(before_one, range(len(names))))

    def run_read(threads):
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(read_bytes, paths))

    def run_now(threads):
        features._fill(now, folder, names, shape, pool, "", False, workers=threads)

    gb = sum(os.path.getsize(q) for q in paths) / 1e9
    print(f"{len(paths)} train {kind} files, {gb:.2f} GB; cores {os.cpu_count()}; "
          f"per-file work, seconds for all files (us per file)")
    features.load_feature(folder, names[0], shape)  # learn the .npy header once, as a run does
    for threads in args.threads:
        for state in ("cold", "warm"):
            for r in range(args.repeats):
                cells = []
                if not args.skip_read:
                    if state == "cold":
                        evict(paths)
                    s = seconds(lambda: run_read(threads))
                    cells.append(f"read only {s:6.2f} s ({gb / s:5.2f} GB/s)")
                for label, fn in (("before", run_before), ("now", run_now)):
                    if state == "cold":
                        evict(paths)
                    w = seconds(lambda: fn(threads))
                    cells.append(f"{label} {w:6.2f} s ({1e6 * w / len(paths):5.0f})")
                print(f"threads {threads:3d}, page cache {state}, #{r + 1}: " + " | ".join(cells), flush=True)
    same = np.array_equal(before.view(np.uint32), now.view(np.uint32))
    print(f"before and now hold the same bits: {same}")
    dirs = features.modality_dirs(str(feats))
    for state in ("cold", "warm"):
        if state == "cold":
            evict([features.feature_path(d, n) for d in dirs.values() for n in names])
        t = time.perf_counter()
        features.load_split(dirs, names, progress=False, pool_frames=True, cache=False)
        print(f"features.load_split, train split, 3 modalities, no cache, page cache {state}: "
              f"{time.perf_counter() - t:.2f} s", flush=True)
    if not same:
        sys.exit("load_speed: the loader's rows differ from the reference")


if __name__ == "__main__":
    main()
