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
    names = [f"vid{i:08d}" for i in range(5)]
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
    packed_dir = os.path.join(dirs["st"], features.PACKED_DIR)
    files = sorted(os.listdir(packed_dir))
    assert len(files) == 2 and files[0].endswith(".npy") and files[1] == files[0] + ".json"  # array + its key
    second = features.load_split(dirs, names, progress=False, cache=True)
    assert isinstance(second["st"], np.memmap)          # served from the packed cache
    for k in first:
        assert np.array_equal(second[k], plain[k])
    # a changed file changes the content key: the cache is rebuilt, never stale
    new = np.full((10, 512), 7.0, dtype=np.float32)
    np.save(os.path.join(dirs["st"], "vid00000001.npy"), new)
    third = features.load_split(dirs, names, progress=False, cache=True)
    assert np.array_equal(third["st"][1], new) and not isinstance(third["st"], np.memmap)
    assert np.array_equal(third["st"][0], plain["st"][0])
    # ... in place: the same packed file (the name follows the list of videos), no stale copy beside it
    packed = sorted(f for f in os.listdir(packed_dir) if f.endswith(".npy"))
    assert len(packed) == 1 and sorted(os.listdir(packed_dir)) == [packed[0], packed[0] + ".json"]
    fourth = features.load_split(dirs, names, progress=False, cache=True)
    assert isinstance(fourth["st"], np.memmap) and np.array_equal(fourth["st"][1], new)  # the rebuilt copy
    assert np.array_equal(np.load(os.path.join(packed_dir, packed[0]))[1], new)
    # another order of the same videos is another split: rows follow the requested order
    rev = features.load_split(dirs, names[::-1], progress=False, cache=True)
    assert np.array_equal(rev["audio"][0], plain["audio"][4])
    assert len([f for f in os.listdir(packed_dir) if f.endswith(".npy")]) == 2


def test_a_packed_copy_whose_shape_or_key_does_not_match_is_rebuilt(tmp_path):
    names = [f"vid{i:08d}" for i in range(3)]
    dirs = write_videos(tmp_path, names)
    want = features.load_split(dirs, names, progress=False, cache=False)["audio"]
    features.load_split(dirs, names, progress=False, cache=True)
    packed_dir = os.path.join(dirs["audio"], features.PACKED_DIR)
    (name,) = [f for f in os.listdir(packed_dir) if f.endswith(".npy")]
    path = os.path.join(packed_dir, name)
    np.save(path, np.zeros((2, 10, 128), np.float32))   # a damaged copy: wrong shape, key left as it was
    got = features.load_split(dirs, names, progress=False, cache=True)["audio"]
    assert not isinstance(got, np.memmap) and np.array_equal(got, want)
    assert np.array_equal(np.load(path), want)
    with open(path + ".json", "w") as f:
        f.write('{"key": "something else"}')               # a copy of other files
    np.save(path, np.ones((3, 10, 128), np.float32))
    got = features.load_split(dirs, names, progress=False, cache=True)["audio"]
    assert not isinstance(got, np.memmap) and np.array_equal(got, want)


def test_load_feature_accepts_float16_32_64_and_names_the_file_at_fault(tmp_path):
    from avvp.errors import AVVPError
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 128))
    for i, dtype in enumerate((np.float16, np.float32, np.float64)):
        np.save(tmp_path / f"vid{i:08d}.npy", x.astype(dtype))
        got = features.load_feature(str(tmp_path), f"vid{i:08d}", (10, 128))
        assert got.dtype == np.float32 and got.flags.writeable
        assert np.array_equal(got, x.astype(dtype).astype(np.float32))
    path = tmp_path / "vid00000001.npy"
    full = path.read_bytes()
    path.write_bytes(full[:-100])                            # truncated
    with pytest.raises(AVVPError, match=r"vid00000001\.npy: cannot read \.npy"):
        features.load_feature(str(tmp_path), "vid00000001", (10, 128))
    bad = x.astype(np.float32)
    bad[3, 4] = np.nan
    np.save(path, bad)
    with pytest.raises(AVVPError, match=r"vid00000001\.npy: 1 non-finite value"):
        features.load_feature(str(tmp_path), "vid00000001", (10, 128))
    np.save(path, x[:, :64].astype(np.float32))
    with pytest.raises(AVVPError, match=r"vid00000001\.npy: shape \(10, 64\) \(expected \(10, 128\)\)"):
        features.load_feature(str(tmp_path), "vid00000001", (10, 128))
    with pytest.raises(AVVPError, match=r"vid00000009\.npy: feature file missing"):
        features.load_feature(str(tmp_path), "vid00000009", (10, 128))


def test_auto_cache_covers_every_split_of_a_large_dataset_and_none_of_a_small_one(tmp_path, monkeypatch):
    from avvp import data
    names = [f"vid{i:08d}" for i in range(6)]
    dirs = write_videos(tmp_path, names)
    (tmp_path / "vggish" / "notes.txt").write_text("not a video")
    assert features.count_videos(dirs["audio"]) == 6 and features.count_videos(dirs["audio"], stop=4) == 4
    auto = "auto"
    monkeypatch.setattr(data, "CACHE_MIN_VIDEOS", 6)  # the folder counts as "large": a 2-video split is cached
    assert data.use_cache(auto, dirs, 2) is True
    monkeypatch.setattr(data, "CACHE_MIN_VIDEOS", 7)  # one video short: read per file
    assert data.use_cache(auto, dirs, 2) is False
    assert data.use_cache(auto, dirs, 7) is True  # a split that large on its own
    assert data.use_cache("on", dirs, 2) is True
    monkeypatch.setattr(data, "CACHE_MIN_VIDEOS", 1)
    assert data.use_cache("off", dirs, 2) is False


def test_one_stat_per_file_feeds_the_missing_check_and_the_cache_key(tmp_path):
    dirs = {k: tmp_path / folder for k, (folder, _) in features.MODALITIES.items()}
    for d in dirs.values():
        d.mkdir()
    names = [f"vid{i:08d}" for i in range(5)]
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
    for key in dirs:  # the names from the split's stat pass, after skipping, equal a fresh pass over the kept files
        assert features._packed_names(ok, False, kept[key]) == features._packed_names(ok, False, fresh[key])
    name, key = features._packed_names(ok, False, fresh["st"])
    np.save(dirs["st"] / "vid00000004.npy", np.ones((10, 512), np.float64))  # rewritten: new size
    new_name, new_key = features._packed_names(ok, False, features.stat_files(dirs, ok)["st"])
    assert new_name == name and new_key != key          # the same packed file, with another content key
    assert features._packed_names(ok[::-1], False, fresh["st"][::-1])[0] != name   # another list: another file
    assert features._packed_names(ok, True, fresh["st"])[0] != name                # pooled: another file


def test_split_loading_gives_the_bits_of_reading_each_file_on_its_own(tmp_path):
    """Every row of a split must hold the bits of reading that file on its own (load_feature, then
    segment_means), for float16, float32 and float64 files alike, pooled or not."""
    rng = np.random.default_rng(3)
    names = [f"vid{i:08d}" for i in range(12)]
    d = tmp_path / "res152"
    d.mkdir()
    dtypes = [np.float16, np.float32, np.float64]
    for i, n in enumerate(names):
        np.save(d / f"{n[:11]}.npy", (rng.standard_normal((80, 2048)) * 3).astype(dtypes[i % 3]))
    shape = features.MODALITIES["video"][1]
    want_full = np.stack([features.load_feature(str(d), n, shape) for n in names])  # (12, 80, 2048)
    want_pooled = np.stack([features.segment_means(x) for x in want_full])          # (12, 10, 2048)
    assert np.allclose(want_pooled[5, 3], want_full[5, 24:32].mean(0), atol=1e-5)
    for pool, want in ((False, want_full), (True, want_pooled)):
        got = np.empty(want.shape, np.float32)
        features._fill(got, str(d), names, shape, pool, "test", False)
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), f"pool={pool}"


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the float32 sum below, on purpose
def test_pooled_loading_refuses_nan_and_inf_frames_with_the_full_count(tmp_path):
    """With pooling, a NaN or inf frame value is refused with the count of bad values in the file
    (not in the segment means, where inf and -inf of one segment make one NaN), and finite frames
    too large for the model's float32 sums are refused too: the checks are on the file's values."""
    from avvp.errors import AVVPError
    names = [f"vid{i:08d}" for i in range(3)]
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
    with pytest.raises(AVVPError, match=r"vid00000001\.npy: 163840 value\(s\) beyond \+-1e\+06 \(largest 3\.4e\+38\)"):
        features._fill(out, str(d), names, shape, True, "test", False)


def test_a_bad_file_stops_the_split_without_reading_the_rest(tmp_path, monkeypatch):
    """The first bad file raises, naming itself, and the reads not yet started are cancelled: a
    NaN in the first of 1,000 files must not cost reading the other 999."""
    import time

    from avvp.errors import AVVPError
    names = [f"vid{i:08d}" for i in range(1000)]
    d = tmp_path / "vggish"
    d.mkdir()
    x = np.zeros((10, 128), np.float32)
    for n in names:
        np.save(d / f"{n[:11]}.npy", x)
    x[2, 3] = np.nan
    np.save(d / "vid00000000.npy", x)
    reads, real = [], features.load_feature

    def counting(folder, filename, shape):
        reads.append(filename)
        if filename != names[0]:
            time.sleep(0.002)  # a file of a real split takes a while to read
        return real(folder, filename, shape)
    monkeypatch.setattr(features, "load_feature", counting)
    with pytest.raises(AVVPError, match=r"vid00000000\.npy: 1 non-finite value"):
        features._fill(np.empty((1000, 10, 128), np.float32), str(d), names, (10, 128), False, "t", False)
    assert names[0] in reads and len(reads) < 200, len(reads)   # the threads running, not all 1,000 reads
