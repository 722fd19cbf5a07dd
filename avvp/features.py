"""Per-video LLP features: vggish (10, 128), res152 (80, 2048), r2plus1d_18 (10, 512).

A video's feature file is `<dir>/<stem>.npy`. The functions here take stems; the rows of an LLP
label file name their videos `<11-character id>_<start>_<end>`, whose stem is the id
(llp.video_id, applied where label files are read). Files may be float16,
float32 or float64; everything is computed in float32.

A split is loaded into one array per modality. For LLP-sized data a packed copy of each split is
kept in `<feature folder>/.packed/` and memory-mapped on later runs: one sequential read instead
of one file per video. There is one packed file per split (per list of videos); when a feature
file changes, the same packed file is rebuilt in place, so stale copies do not pile up. Deleting
`.packed/` is always safe.
"""
import hashlib
import json
import os
import stat as stat_module
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .errors import AVVPError
from .files import atomic_path, atomic_write_text
from .llp import FRAMES_PER_SEGMENT

# modality key -> (default folder name, shape of one video's array)
MODALITIES = {
    "audio": ("vggish", (10, 128)),
    "video": ("res152", (80, 2048)),
    "st": ("r2plus1d_18", (10, 512)),
}
ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)
# the networks' features stay within a few hundred (VGGish post-processed: 0-255); at 1e20 the
# attention's float32 dot products overflow to inf and the probabilities come out NaN
FEATURE_LIMIT = 1e6
PACKED_DIR = ".packed"
MANIFEST = "manifest.csv"  # written by avvp.extract: where each id's video came from, and how it went
MANIFEST_COLUMNS = ("id", "source", "status", "reason")


def modality_dirs(root):
    """The three feature folders under `root`: dict modality key -> root/<vggish|res152|r2plus1d_18>."""
    return {key: os.path.join(root, folder) for key, (folder, _) in MODALITIES.items()}


def feature_path(folder, stem):
    return os.path.join(folder, stem + ".npy")


def check_array(arr, shape, where):
    """Validate one video's array; returns it as float32 or raises AVVPError naming `where`."""
    if arr.dtype.type not in ACCEPTED_DTYPES:
        raise AVVPError(f"{where}: dtype {arr.dtype} (expected float16, float32 or float64)")
    if tuple(arr.shape) != tuple(shape):
        raise AVVPError(f"{where}: shape {tuple(arr.shape)} (expected {tuple(shape)})")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise AVVPError(f"{where}: {bad} non-finite value(s) (NaN or inf)")
    magnitude = np.abs(arr) if arr.dtype != np.float16 else None  # float16 ends at 65504, below the limit
    if magnitude is not None and (magnitude > FEATURE_LIMIT).any():
        raise AVVPError(f"{where}: {int((magnitude > FEATURE_LIMIT).sum())} value(s) beyond +-{FEATURE_LIMIT:g} "
                        f"(largest {magnitude.max():.3g}): not features of these networks, and the model's float32 "
                        "sums would overflow")
    return np.asarray(arr, dtype=np.float32)


def load_feature(folder, stem, shape):
    """One video's features as float32, validated; errors name the file and the fault."""
    path = feature_path(folder, stem)
    if not os.path.isfile(path):
        raise AVVPError(f"{path}: feature file missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt or truncated .npy: numpy raises several exception types
        raise AVVPError(f"{path}: cannot read .npy ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive saved under a .npy name
        arr.close()
        raise AVVPError(f"{path}: not a .npy array (got {type(arr).__name__})")
    return check_array(arr, shape, path)


def read_manifest(root, path=None):
    """The rows of a feature folder's manifest.csv (or of the manifest file `path`) as dicts of
    MANIFEST_COLUMNS; [] when there is none. source is relative to `root`."""
    path = path or os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise AVVPError(f"{path}: cannot read the manifest ({type(e).__name__})") from None
    if lines[0].split("\t") != list(MANIFEST_COLUMNS):
        raise AVVPError(f"{path}: not a manifest of avvp.extract (header {lines[0][:80]!r}, expected "
                        f"{chr(9).join(MANIFEST_COLUMNS)!r})")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if line:
            cells = line.split("\t")
            if len(cells) != len(MANIFEST_COLUMNS):
                raise AVVPError(f"{path}, line {i}: {len(cells)} cells (expected {len(MANIFEST_COLUMNS)})")
            rows.append(dict(zip(MANIFEST_COLUMNS, cells)))
    return rows


def segment_means(video):
    """(..., 80, 2048) res152 frames -> (..., 10, 2048): mean of the 8 frames of each segment."""
    return video.reshape(video.shape[:-2] + (10, FRAMES_PER_SEGMENT, video.shape[-1])).mean(-2)


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


def stat_files(dirs, stems):
    """One os.stat per video and folder: dict modality key -> list of (size, mtime_ns) per
    stem, None where the file is missing or not a regular file (the missing-file check and
    the packed cache's key both read it)."""
    out = {}
    for key, folder in dirs.items():
        col = out[key] = []
        for name in stems:
            try:
                st = os.stat(feature_path(folder, name))
            except OSError:  # missing, unreadable folder, name too long: all mean "no file"
                col.append(None)
                continue
            col.append((st.st_size, st.st_mtime_ns) if stat_module.S_ISREG(st.st_mode) else None)
    return out


def missing_videos(dirs, stems, stats=None):
    """Stems lacking a feature file in any of `dirs` (dict modality -> folder)."""
    stats = stat_files(dirs, stems) if stats is None else stats
    return [f for i, f in enumerate(stems) if any(stats[key][i] is None for key in dirs)]


def _fill(arr, folder, stems, shape, pool, desc, progress):
    """Read every video's file into arr[i] (segment means with pool), with reader threads (file
    reads release the GIL); the first bad file raises, naming it."""
    def one(i):
        x = load_feature(folder, stems[i], shape)
        arr[i] = segment_means(x) if pool else x

    workers = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex, tqdm(total=len(stems), desc=desc, leave=False,
                                                 disable=not progress, mininterval=1.0) as bar:
        for _ in ex.map(one, range(len(stems))):  # in order; an error cancels the tasks not started
            bar.update()


def _packed_names(stems, pool, stats):
    """(file name of a split's packed copy, key of its content): the name follows the list of
    videos, the key also each file's size and mtime, so a changed file rebuilds the same copy."""
    ids = "".join(f"{n};" for n in stems)
    name = hashlib.sha1(f"pool={pool}|{ids}".encode()).hexdigest()[:16]
    key = hashlib.sha1(("|".join(f"{s[0]}:{s[1]}" if s else "missing" for s in stats)).encode()).hexdigest()
    return name, key


def _read_packed(packed, key, full):
    """The packed copy as a read-only memory map when its key and shape match, else None."""
    try:
        with open(packed + ".json", encoding="utf-8") as f:
            if json.load(f).get("key") != key:
                return None
        arr = np.load(packed, mmap_mode="r")
    except (OSError, ValueError):
        return None  # absent or unreadable: rebuild it
    return arr if arr.shape == full and arr.dtype == np.float32 else None


def load_split(dirs, stems, desc="features", progress=True, pool_frames=False, cache=True, stats=None):
    """Load a whole split into one float32 array per modality.

    dirs: dict modality key ('audio', 'video', 'st') -> folder.
    pool_frames: store res152 as (N, 10, 2048) segment means instead of (N, 80, 2048) (see
    MMIL_Net's frame_pool='early'); done per file, so the full array is never held.
    cache: read and keep the packed copy in `<folder>/.packed/` (see the module doc); an
    unwritable folder just means no cache. stats: stat_files(dirs, stems), when taken already.
    Returns dict key -> (N, *shape) float32 array (maybe a read-only memory map), rows in the
    order of `stems`.
    """
    if cache and stats is None:
        stats = stat_files(dirs, stems)
    out = {}
    for key, folder in dirs.items():
        shape = MODALITIES[key][1]
        if not os.path.isdir(folder):
            raise AVVPError(f"{folder}: feature folder not found (needed for {MODALITIES[key][0]} features)")
        pool = pool_frames and key == "video"
        full = (len(stems),) + ((10, shape[1]) if pool else shape)
        packed = None
        if cache:
            name, content = _packed_names(stems, pool, stats[key])
            packed = os.path.join(folder, PACKED_DIR, name + ".npy")
            arr = _read_packed(packed, content, full)
            if arr is not None:
                out[key] = arr
                continue
        arr = np.empty(full, dtype=np.float32)
        _fill(arr, folder, stems, shape, pool, f"{desc} {MODALITIES[key][0]}", progress)
        if packed is not None:
            try:
                with atomic_path(packed) as tmp, open(tmp, "wb") as f:
                    np.save(f, arr)
                atomic_write_text(packed + ".json", json.dumps({"key": content, "videos": len(stems)}))
            except AVVPError:
                pass  # read-only feature folder: run without a cache
        out[key] = arr
    return out
