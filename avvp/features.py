"""Per-video LLP features: vggish (10, 128), res152 (80, 2048), r2plus1d_18 (10, 512).

A video's feature file is `<dir>/<first 11 chars of filename>.npy`. Files may be float16,
float32 or float64; everything is computed in float32.
"""
import hashlib
import io
import os
import stat as stat_module
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .llp import video_id
from .utils import AVVPError, atomic_path

# modality key -> (default folder name, shape of one video's array)
MODALITIES = {
    "audio": ("vggish", (10, 128)),
    "video": ("res152", (80, 2048)),
    "st": ("r2plus1d_18", (10, 512)),
}
ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)
FRAMES_PER_SEGMENT = 8


def modality_dirs(root):
    """The three feature folders under `root`: dict modality key -> root/<vggish|res152|r2plus1d_18>."""
    return {key: os.path.join(root, folder) for key, (folder, _) in MODALITIES.items()}


def feature_path(folder, filename):
    return os.path.join(folder, video_id(filename) + ".npy")


def check_array(arr, shape, where, finite=True):
    """Validate one video's array; returns it as float32 or raises AVVPError naming `where`.
    finite=False leaves the NaN/inf check to the caller (see _fill)."""
    if arr.dtype.type not in ACCEPTED_DTYPES:
        raise AVVPError(f"{where}: dtype {arr.dtype} (expected float16, float32 or float64)")
    if tuple(arr.shape) != tuple(shape):
        raise AVVPError(f"{where}: shape {tuple(arr.shape)} (expected {tuple(shape)})")
    arr = np.asarray(arr, dtype=np.float32)
    if finite and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise AVVPError(f"{where}: {bad} non-finite value(s) (NaN or inf)")
    return arr


class ReadBuffer(threading.local):
    """One reader thread's buffer for the bytes of one file, reused from file to file, instead of
    a fresh ~650 KB array per res152 file that the kernel must map and zero on first touch.
    A small gain: LLP's 10,000 train res152 files, pooled, on the eighth session's H200 machine
    (benchmarks/load_speed.py, with the means written in place and checked there, see _fill):
    from disk, 16 threads, 5.84 -> 5.49 s; cached, 4 threads, 1.98 -> 1.80 s; cached, 16
    threads, no change (3.5 s: there the threads wait on each other, not on memory)."""

    def __init__(self):
        self.buf = np.empty(0, dtype=np.uint8)

    def take(self, n):
        """A uint8 view of n bytes, valid until the next take() on this thread."""
        if self.buf.size < n:
            self.buf = np.empty(n, dtype=np.uint8)
        return self.buf[:n]


def load_feature(folder, filename, shape, scratch=None, finite=True):
    """One video's features as float32, validated; errors name the file and the fault.

    scratch: a ReadBuffer to read into instead of a new array; the result may then be a view of
    it, valid until the thread's next read. finite=False skips the NaN/inf check (see _fill)."""
    path = feature_path(folder, filename)
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: feature file missing (video {filename})")
    try:
        with open(path, "rb") as f:  # the file is read once, whichever way it is then parsed
            size = os.fstat(f.fileno()).st_size
            buf = scratch.take(size) if scratch is not None else np.empty(size, dtype=np.uint8)
            f.readinto(memoryview(buf))
    except OSError as e:
        raise AVVPError(f"{path}: cannot read .npy ({type(e).__name__}: {e})") from None
    head = _header_of(buf)
    arr = _view_known(buf, head)
    if arr is None:
        try:
            arr = np.load(io.BytesIO(buf), allow_pickle=False)
        except Exception as e:  # corrupt or truncated .npy: numpy raises several exception types
            raise AVVPError(f"{path}: cannot read .npy ({type(e).__name__}: {e})") from None
        if not isinstance(arr, np.ndarray):  # e.g. an .npz archive saved under a .npy name
            if hasattr(arr, "close"):
                arr.close()
            raise AVVPError(f"{path}: not a .npy array (got {type(arr).__name__})")
        if head is not None and arr.dtype.type in ACCEPTED_DTYPES and arr.ndim == 2 and arr.flags.c_contiguous:
            _KNOWN_HEADERS[head] = (arr.dtype, arr.shape)
    return check_array(arr, shape, path, finite)


# A split's files share one exact .npy header (same dtype and shape). np.load parses every header
# with ast.literal_eval, which costs more than reading a small file and holds the GIL. Headers that
# np.load has already read into a plain C-ordered 2-D array are remembered here (header bytes ->
# dtype, shape), and a file that starts with one of them and has exactly the right size is viewed
# as that array. Anything else (first file of a kind, other header, truncated or padded file)
# goes through np.load, with its checks and error messages.
_NPY_V1 = b"\x93NUMPY\x01\x00"
_KNOWN_HEADERS = {}


def _header_of(buf):
    """The v1.0 .npy header (magic + length + dict) at the start of `buf` (uint8), or None."""
    if len(buf) < 10 or bytes(buf[:8]) != _NPY_V1:
        return None
    end = 10 + int.from_bytes(bytes(buf[8:10]), "little")
    return bytes(buf[:end]) if len(buf) >= end else None


def _view_known(buf, head):
    """`buf`'s array, viewed without parsing, when `head` is a known header and the size fits; else None."""
    known = _KNOWN_HEADERS.get(head) if head is not None else None
    if known is None:
        return None
    dtype, shape = known
    if len(buf) - len(head) != dtype.itemsize * shape[0] * shape[1]:
        return None
    return buf[len(head):].view(dtype).reshape(shape)


def count_videos(folder, stop=None):
    """How many `.npy` files `folder` holds, counting no further than `stop` (cheap on large folders)."""
    n = 0
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.endswith(".npy"):
                n += 1
                if stop is not None and n >= stop:
                    break
    return n


def stat_files(dirs, filenames):
    """One os.stat per video and folder: dict modality key -> list of (size, mtime_ns) per
    filename, None where the file is missing or not a regular file. Feeds both the missing-file
    check and the packed cache's key, which used to stat every file twice (isfile, then stat):
    LLP's 10,000 train videos, both uses, on the 2-core CPU: 0.30 s -> 0.12 s (medians of 7).
    On one thread: reader threads made the stat pass twice slower there (the GIL is held
    between two stat calls)."""
    out = {}
    for key, folder in dirs.items():
        col = out[key] = []
        for name in filenames:
            try:
                st = os.stat(feature_path(folder, name))
            except OSError:  # missing, unreadable folder, name too long: all mean "no file"
                col.append(None)
                continue
            col.append((st.st_size, st.st_mtime_ns) if stat_module.S_ISREG(st.st_mode) else None)
    return out


def missing_videos(dirs, filenames, stats=None):
    """Filenames lacking a feature file in any of `dirs` (dict modality -> folder).
    stats: stat_files(dirs, filenames), when already taken."""
    stats = stat_files(dirs, filenames) if stats is None else stats
    return [f for i, f in enumerate(filenames) if any(stats[key][i] is None for key in dirs)]


def segment_means(video, out=None):
    """(..., 80, 2048) res152 frames -> (..., 10, 2048): mean of the 8 frames of each segment
    (into `out` when given: the same bits, no temporary)."""
    return video.reshape(video.shape[:-2] + (10, FRAMES_PER_SEGMENT, video.shape[-1])).mean(-2, out=out)


# Files per reader task. A thread-pool task per file cost more than reading a small file: on the
# 2-core CPU, LLP's 10,000 train vggish files (5 KB each, in the page cache) took 114-117 us per
# file on 2 threads as one task and one new array per file, 62-79 us in tasks of 64 with reused
# buffers (benchmarks/load_speed.py --modality audio). The whole train split, three modalities,
# pooled: 4.3 -> 3.0 s from memory, 11.0-12.1 -> 8.8-10.9 s from disk.
READ_CHUNK = 64


def _fill(arr, folder, filenames, shape, pool, desc, progress, workers=None):
    """Read every video's file into arr[i], with as many reader threads as cores, up to 16 (file
    reads release the GIL; `workers` sets another number, for benchmarks/load_speed.py); errors
    name the first bad file.

    Threads take READ_CHUNK files per task, read each into their own reused buffer and write the
    result straight into arr[i]. With pool, the NaN/inf check runs on the (10, 2048) means
    instead of the (80, 2048) frames: a NaN or inf frame value makes its segment's mean NaN or
    inf, so finite means prove finite frames, and only a non-finite mean sends the frames
    through the full check (which names the fault, or passes them when the mean merely
    overflowed, as before)."""
    scratch = ReadBuffer()

    def one(i):
        x = load_feature(folder, filenames[i], shape, scratch=scratch, finite=not pool)  # may view scratch
        if not pool:
            arr[i] = x
            return
        with np.errstate(invalid="ignore"):  # inf - inf in a bad file: the check below says which file
            segment_means(x, out=arr[i])  # (10, 2048)
        if not np.isfinite(arr[i]).all():
            check_array(x, shape, feature_path(folder, filenames[i]))

    n = len(filenames)

    def chunk(lo):  # files lo .. lo + READ_CHUNK - 1, in order: the first bad one raises
        hi = min(lo + READ_CHUNK, n)
        for i in range(lo, hi):
            one(i)
        return hi - lo

    workers = workers or max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex, tqdm(total=n, desc=desc, leave=False, disable=not progress,
                                                 mininterval=1.0) as bar:
        # results in submission order; on the first error, map cancels the tasks not yet started
        for done in ex.map(chunk, range(0, n, READ_CHUNK)):
            bar.update(done)


def _cache_key(filenames, pool, stats):
    """Hash of the split's file list and each file's size and mtime: any change rebuilds the cache.
    stats: one folder's (size, mtime_ns) per filename, None for a missing file (stat_files)."""
    h = hashlib.sha1(f"v1|pool={pool}|".encode())
    for name, st in zip(filenames, stats):
        size, mtime = st if st is not None else ("missing", "")
        h.update(f"{video_id(name)}:{size}:{mtime};".encode())
    return h.hexdigest()[:16]


def load_split(dirs, filenames, desc="features", progress=True, pool_frames=False, cache=True, stats=None):
    """Load a whole split into one float32 array per modality.

    dirs: dict modality key ('audio', 'video', 'st') -> folder.
    pool_frames: store res152 as (N, 10, 2048) segment means instead of (N, 80, 2048) (see
    MMIL_Net's frame_pool='early'); done per file, so the full array is never held.
    cache: keep a packed copy of the split next to the per-video files
    (`<folder>/.packed/<key>.npy`, keyed by the file list, sizes and mtimes, so it is rebuilt
    when any file changes) and memory-map it on later runs: one sequential read instead of one
    file per video. An unwritable folder just means no cache.
    stats: stat_files(dirs, filenames), when the caller has taken it (else taken here, for the cache).
    Returns dict key -> (N, *shape) float32 array (possibly a read-only memory map), rows in the
    order of `filenames`.
    """
    if cache and stats is None:
        stats = stat_files(dirs, filenames)
    out = {}
    for key, folder in dirs.items():
        shape = MODALITIES[key][1]
        if not os.path.isdir(folder):
            raise AVVPError(f"{folder}: feature folder not found (needed for {MODALITIES[key][0]} features)")
        pool = pool_frames and key == "video"
        full = (len(filenames),) + ((10, shape[1]) if pool else shape)
        label = f"{desc} {MODALITIES[key][0]}"
        packed = None
        if cache:
            packed = os.path.join(folder, ".packed", _cache_key(filenames, pool, stats[key]) + ".npy")
            if os.path.isfile(packed):
                try:
                    arr = np.load(packed, mmap_mode="r")
                    if arr.shape == full and arr.dtype == np.float32:
                        out[key] = arr
                        continue
                except (OSError, ValueError):
                    pass  # unreadable cache: rebuild it
        arr = np.empty(full, dtype=np.float32)
        _fill(arr, folder, filenames, shape, pool, label, progress)
        if packed is not None:
            try:
                with atomic_path(packed) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, arr)
            except AVVPError:
                pass  # read-only feature folder: run without a cache
        out[key] = arr
    return out
