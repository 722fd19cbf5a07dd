"""Split loading: values, frame pooling, and the packed cache (used, and rebuilt when a file changes)."""
import os

import numpy as np
import pytest

from avvp import features


def write_videos(root, names, seed=0):
    rng = np.random.default_rng(seed)
    dirs = {}
    for key, (folder, shape) in features.MODALITIES.items():
        d = root / folder
        d.mkdir(exist_ok=True)
        dirs[key] = str(d)
        for n in names:
            np.save(d / f"{n[:11]}.npy", rng.standard_normal(shape).astype(np.float16))
    return dirs


def test_load_split_values_pooling_and_cache(tmp_path):
    names = [f"vid{i:08d}_0_10" for i in range(5)]
    dirs = write_videos(tmp_path, names)
    plain = features.load_split(dirs, names, progress=False, cache=False)
    assert plain["video"].shape == (5, 80, 2048) and plain["video"].dtype == np.float32
    raw = np.load(os.path.join(dirs["video"], "vid00000003.npy")).astype(np.float32)
    assert np.array_equal(plain["video"][3], raw)
    pooled = features.load_split(dirs, names, progress=False, pool_frames=True, cache=False)
    assert pooled["video"].shape == (5, 10, 2048)
    assert np.allclose(pooled["video"][3, 2], raw[16:24].mean(0), atol=1e-6)
    assert not os.path.exists(os.path.join(dirs["audio"], ".packed"))

    first = features.load_split(dirs, names, progress=False, cache=True)
    packed = os.listdir(os.path.join(dirs["st"], ".packed"))
    assert len(packed) == 1
    second = features.load_split(dirs, names, progress=False, cache=True)
    assert isinstance(second["st"], np.memmap)          # served from the packed cache
    for k in first:
        assert np.array_equal(second[k], plain[k])
    # a changed file gives a new key: the cache is rebuilt, never stale
    new = np.full((10, 512), 7.0, dtype=np.float32)
    np.save(os.path.join(dirs["st"], "vid00000001.npy"), new)
    third = features.load_split(dirs, names, progress=False, cache=True)
    assert np.array_equal(third["st"][1], new) and not isinstance(third["st"], np.memmap)
    assert len(os.listdir(os.path.join(dirs["st"], ".packed"))) == 2
    # another order of the same videos is another split: rows follow the requested order
    rev = features.load_split(dirs, names[::-1], progress=False, cache=True)
    assert np.array_equal(rev["audio"][0], plain["audio"][4])


def test_known_header_fast_path_reads_the_same_arrays_and_keeps_every_check(tmp_path, monkeypatch):
    """After np.load has read one file, files with the same header are read without np.load; a
    truncated, padded or NaN file still gets np.load's handling or check_array's error."""
    from avvp.utils import AVVPError
    monkeypatch.setattr(features, "_KNOWN_HEADERS", {})
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((10, 128)).astype(np.float32) for _ in range(3)]
    for i, a in enumerate(x):
        np.save(tmp_path / f"vid{i:08d}.npy", a)
    first = features.load_feature(str(tmp_path), "vid00000000_0_10", (10, 128))  # np.load, learns the header
    assert np.array_equal(first, x[0]) and len(features._KNOWN_HEADERS) == 1
    real_load = np.load

    def no_np_load(*a, **k):
        raise AssertionError("np.load called")
    monkeypatch.setattr(features.np, "load", no_np_load)
    got = features.load_feature(str(tmp_path), "vid00000001_0_10", (10, 128))  # fast path only
    assert np.array_equal(got, x[1]) and got.dtype == np.float32 and got.flags.writeable
    monkeypatch.setattr(features.np, "load", real_load)
    # truncated: same header, short data -> np.load's error, naming the file
    path = tmp_path / "vid00000002.npy"
    full = path.read_bytes()
    path.write_bytes(full[:-100])
    with pytest.raises(AVVPError, match=r"vid00000002\.npy: cannot read \.npy"):
        features.load_feature(str(tmp_path), "vid00000002_0_10", (10, 128))
    # trailing bytes: np.load ignores them, and so does the loader
    path.write_bytes(full + b"\0" * 64)
    assert np.array_equal(features.load_feature(str(tmp_path), "vid00000002_0_10", (10, 128)), x[2])
    # a NaN read through the fast path is still refused
    bad = x[2].copy()
    bad[3, 4] = np.nan
    np.save(path, bad)
    with pytest.raises(AVVPError, match=r"vid00000002\.npy: 1 non-finite value"):
        features.load_feature(str(tmp_path), "vid00000002_0_10", (10, 128))
    # another shape under a known dtype: its own header, so np.load and the shape check
    np.save(path, x[2][:, :64])
    with pytest.raises(AVVPError, match=r"vid00000002\.npy: shape \(10, 64\) \(expected \(10, 128\)\)"):
        features.load_feature(str(tmp_path), "vid00000002_0_10", (10, 128))


def test_auto_cache_covers_every_split_of_a_large_dataset_and_none_of_a_small_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from avvp import engine
    names = [f"vid{i:08d}_0_10" for i in range(6)]
    dirs = write_videos(tmp_path, names)
    (tmp_path / "vggish" / "notes.txt").write_text("not a video")
    assert features.count_videos(dirs["audio"]) == 6 and features.count_videos(dirs["audio"], stop=4) == 4
    auto = SimpleNamespace(feature_cache="auto")
    monkeypatch.setattr(engine, "CACHE_MIN_VIDEOS", 6)  # the folder counts as "large": a 2-video split is cached
    assert engine.use_cache(auto, dirs, 2) is True
    monkeypatch.setattr(engine, "CACHE_MIN_VIDEOS", 7)  # one video short: read per file
    assert engine.use_cache(auto, dirs, 2) is False
    assert engine.use_cache(auto, dirs, 7) is True  # a split that large on its own
    assert engine.use_cache(SimpleNamespace(feature_cache="on"), dirs, 2) is True
    monkeypatch.setattr(engine, "CACHE_MIN_VIDEOS", 1)
    assert engine.use_cache(SimpleNamespace(feature_cache="off"), dirs, 2) is False


def test_one_stat_per_file_feeds_the_missing_check_and_the_cache_key(tmp_path):
    dirs = {k: tmp_path / folder for k, (folder, _) in features.MODALITIES.items()}
    for d in dirs.values():
        d.mkdir()
    names = [f"vid{i:08d}_0_10" for i in range(5)]
    for i, name in enumerate(names):
        for key, d in dirs.items():
            if (i, key) == (1, "video"):
                continue  # video 1 lacks its res152 file
            if (i, key) == (2, "st"):
                (d / f"{name[:11]}.npy").mkdir()  # a folder under a feature file's name is no file
                continue
            np.save(d / f"{name[:11]}.npy", np.zeros(features.MODALITIES[key][1], np.float32))
    stats = features.stat_files(dirs, names)
    assert [s is None for s in stats["video"]] == [False, True, False, False, False]
    assert [s is None for s in stats["st"]] == [False, False, True, False, False]
    assert stats["audio"][0] == (os.stat(dirs["audio"] / "vid00000000.npy").st_size,
                                 os.stat(dirs["audio"] / "vid00000000.npy").st_mtime_ns)
    assert features.missing_videos(dirs, names, stats) == names[1:3] == features.missing_videos(dirs, names)
    ok = [names[0], names[3], names[4]]
    kept = {k: [col[i] for i in (0, 3, 4)] for k, col in stats.items()}
    fresh = features.stat_files(dirs, ok)
    for key in dirs:  # the key from the split's stat pass, after skipping, equals a fresh pass over the kept files
        assert features._cache_key(ok, False, kept[key]) == features._cache_key(ok, False, fresh[key])
    before = features._cache_key(ok, False, fresh["st"])
    np.save(dirs["st"] / "vid00000004.npy", np.ones((10, 512), np.float64))  # rewritten: new size
    assert features._cache_key(ok, False, features.stat_files(dirs, ok)["st"]) != before


@pytest.mark.parametrize("chunk", [5, 64])  # 12 files: three tasks (the last one short), or one
def test_split_loading_reuses_read_buffers_and_gives_the_reference_bits(tmp_path, monkeypatch, chunk):
    """_fill reads files in tasks of READ_CHUNK, each into a per-thread buffer, and pools straight
    into the split's array; every row must hold the bits of reading that file on its own
    (load_feature, then segment_means), for float16, float32 and float64 files alike, pooled or not."""
    monkeypatch.setattr(features, "READ_CHUNK", chunk)
    rng = np.random.default_rng(3)
    names = [f"vid{i:08d}_0_10" for i in range(12)]
    d = tmp_path / "res152"
    d.mkdir()
    dtypes = [np.float16, np.float32, np.float64]
    for i, n in enumerate(names):
        np.save(d / f"{n[:11]}.npy", (rng.standard_normal((80, 2048)) * 3).astype(dtypes[i % 3]))
    shape = features.MODALITIES["video"][1]
    want_full = np.stack([features.load_feature(str(d), n, shape) for n in names])  # (12, 80, 2048)
    want_pooled = np.stack([features.segment_means(x) for x in want_full])          # (12, 10, 2048)
    for pool, want in ((False, want_full), (True, want_pooled)):
        got = np.empty(want.shape, np.float32)
        features._fill(got, str(d), names, shape, pool, "test", False)
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), f"pool={pool}"


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the float32 sum below, on purpose
def test_pooled_loading_refuses_nan_and_inf_frames_with_the_full_count(tmp_path):
    """With pooling, the finite check runs on the segment means; a NaN or inf frame value must
    still be refused, with the count of bad values in the file (not in the means), and finite
    frames whose mean overflows pass as they did when the frames were checked."""
    from avvp.utils import AVVPError
    names = [f"vid{i:08d}_0_10" for i in range(3)]
    d = tmp_path / "res152"
    d.mkdir()
    shape = features.MODALITIES["video"][1]
    for n in names:
        np.save(d / f"{n[:11]}.npy", np.ones(shape, np.float32))
    out = np.empty((3, 10, 2048), np.float32)
    bad = np.ones(shape, np.float32)
    bad[3, 5], bad[4, 5], bad[70, 9] = np.inf, -np.inf, np.nan   # inf and -inf share a segment: mean NaN
    np.save(d / "vid00000001.npy", bad)
    with pytest.raises(AVVPError, match=r"vid00000001\.npy: 3 non-finite value\(s\)"):
        features._fill(out, str(d), names, shape, True, "test", False)
    huge = np.full(shape, np.finfo(np.float32).max, np.float32)   # finite; the float32 sum overflows
    np.save(d / "vid00000001.npy", huge)
    features._fill(out, str(d), names, shape, True, "test", False)
    assert np.isinf(out[1]).all() and (out[[0, 2]] == 1).all()


def test_a_bad_file_stops_the_split_without_reading_the_rest(tmp_path, monkeypatch):
    """The first bad file raises, naming itself, and the tasks not yet started are cancelled: a
    NaN in the first of 1,000 files must not cost reading the other 999."""
    from avvp.utils import AVVPError
    names = [f"vid{i:08d}_0_10" for i in range(1000)]
    d = tmp_path / "vggish"
    d.mkdir()
    x = np.zeros((10, 128), np.float32)
    for n in names:
        np.save(d / f"{n[:11]}.npy", x)
    x[2, 3] = np.nan
    np.save(d / "vid00000000.npy", x)
    reads, real = [], features.load_feature

    def counting(*a, **k):
        reads.append(a[1])
        return real(*a, **k)
    monkeypatch.setattr(features, "load_feature", counting)
    with pytest.raises(AVVPError, match=r"vid00000000\.npy: 1 non-finite value"):
        features._fill(np.empty((1000, 10, 128), np.float32), str(d), names, (10, 128), False, "t", False, workers=2)
    assert len(reads) <= 4 * features.READ_CHUNK, len(reads)   # 2 running tasks, not all 16
