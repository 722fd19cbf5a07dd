"""Split loading: values, frame pooling, and the packed cache (used, and rebuilt when a file changes)."""
import os

import numpy as np

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
