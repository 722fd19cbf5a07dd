"""The synthetic set's feature model: per-class signatures in each feature space, and the vggish,
res152 and r2plus1d_18 features of one video rendered from its dense truth (see avvp.synth)."""
import os

import numpy as np

from .features import feature_path
from .llp import video_id
from .llp import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS

FAMILIES = {
    "voice": ("Speech", "Singing", "Baby_laughter", "Baby_cry_infant_cry"),
    "crowd_sport": ("Cheering", "Clapping", "Basketball_bounce"),
    "animal": ("Dog", "Cat", "Chicken_rooster"),
    "instrument": ("Cello", "Banjo", "Violin_fiddle", "Acoustic_guitar", "Accordion"),
    "engine": ("Car", "Motorcycle", "Lawn_mower", "Chainsaw", "Helicopter"),
    "appliance": ("Vacuum_cleaner", "Blender", "Frying_(food)"),
    "alarm": ("Fire_alarm", "Telephone_bell_ringing"),
}
MODES_PER_CLASS = 3
NUM_DISTRACTORS = 40     # unlabelled event kinds outside the 25 classes
NUM_NUISANCE = 16        # shared background directions per feature space
FEATURE_PARAMS = dict(
    signal_gain=1.0,         # one knob on the strength of every labelled and distractor event
    family_share=0.35,       # fraction of a signature's variance shared with its family
    mode_spread=0.6,         # size of a mode's own component relative to the class signature
    strength_sigma=0.45,     # log-normal sd of an event's strength
    segment_wobble=0.3,      # per-segment relative wobble of a source's intensity (shared by A and V)
    frame_jitter=0.25,       # per-frame relative jitter of a visual event in res152
    distractor_rate=1.0,     # Poisson mean of distractor events per video and modality
    distractor_strength=0.8,  # their median strength relative to a labelled event
    shot_cut_rate=0.5,       # Poisson mean of shot cuts per 10-s clip (they change sound and picture)
    activity_rho=0.5,        # lag-1 autocorrelation of the shared activity level
    # per space: event signal, background (shared nuisance mix + private), shot change, activity,
    # per-segment noise; res152 adds per-frame noise; res152 and r2plus1d_18 are ReLU'd
    audio=dict(signal=0.55, nuisance=0.7, background=0.7, shot=0.4, activity=0.4, noise=1.0, scale=0.5),
    video=dict(signal=0.24, nuisance=0.5, background=0.5, shot=0.6, activity=0.3, noise=0.8,
               frame_noise=0.6, mean=0.0, mean_spread=0.4, scale=0.5),
    st=dict(signal=0.36, nuisance=0.5, background=0.5, shot=0.6, activity=0.5, noise=1.0, mean=0.0,
            mean_spread=0.4, scale=0.5),
)
SPACE_DIMS = {"audio": 128, "video": 2048, "st": 512}


# ---------------------------------------------------------------- random streams (all from one seed)
def rng_stream(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


KEY_WORLD, KEY_IDS, KEY_LABELS, KEY_TRUTH, KEY_VIDEO = 1, 2, 3, 4, 5
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


# ---------------------------------------------------------------- features
def _unit_rms(x):
    return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True))


def build_world(seed):
    """Per feature space: class-mode and distractor signatures, nuisance basis, per-dim means."""
    rng = rng_stream(seed, KEY_WORLD)
    fam_names = list(FAMILIES)
    family_of = np.empty(NUM_CLASSES, dtype=np.int64)
    for f, members in enumerate(FAMILIES.values()):
        family_of[[CLASS_INDEX[c] for c in members]] = f
    g, spread = FEATURE_PARAMS["family_share"], FEATURE_PARAMS["mode_spread"]
    world = {}
    for space, d in SPACE_DIMS.items():
        fam = _unit_rms(rng.standard_normal((len(fam_names), d)))
        own = _unit_rms(rng.standard_normal((NUM_CLASSES, d)))
        base = np.sqrt(g) * fam[family_of] + np.sqrt(1 - g) * own                     # (25, d)
        modes = _unit_rms(rng.standard_normal((NUM_CLASSES, MODES_PER_CLASS, d)))
        sig = _unit_rms(base[:, None, :] + spread * modes).reshape(NUM_CLASSES * MODES_PER_CLASS, d)
        distract = _unit_rms(rng.standard_normal((NUM_DISTRACTORS, d)))
        p = FEATURE_PARAMS[space]
        world[space] = dict(
            sig=np.concatenate([sig, distract]).astype(np.float32),                   # (K, d)
            nuisance=_unit_rms(rng.standard_normal((NUM_NUISANCE, d))).astype(np.float32),
            energy=_unit_rms(rng.standard_normal(d)).astype(np.float32),
            mean=(p.get("mean", 0.0) + p.get("mean_spread", 0.0) * rng.standard_normal(d)).astype(np.float32),
        )
    return world


def _coefficients(rng, audio, visual):
    """Truth (25, 10) of both modalities -> (10, K) signature weights per segment, audio and visual.

    A labelled class is one source: its intensity over time (a per-segment wobble) is shared by
    its sound and its sight, each modality with its own overall strength and signature variant.
    Distractors (sources outside the 25 classes) come and go in each modality on their own.
    """
    fp = FEATURE_PARAMS
    base = NUM_CLASSES * MODES_PER_CLASS
    ca = np.zeros((NUM_SEGMENTS, base + NUM_DISTRACTORS))
    cv = np.zeros_like(ca)
    for c in np.flatnonzero(audio.any(1) | visual.any(1)):
        env = np.clip(1 + fp["segment_wobble"] * rng.standard_normal(NUM_SEGMENTS), 0.2, None)
        for dense, coef in ((audio, ca), (visual, cv)):
            if dense[c].any():
                m = int(rng.integers(MODES_PER_CLASS))
                coef[:, c * MODES_PER_CLASS + m] += rng.lognormal(0.0, fp["strength_sigma"]) * env * dense[c]
    for coef in (ca, cv):
        for _ in range(int(rng.poisson(fp["distractor_rate"]))):
            length = int(rng.integers(1, NUM_SEGMENTS + 1))
            on = int(rng.integers(0, NUM_SEGMENTS - length + 1))
            s = fp["distractor_strength"] * rng.lognormal(0.0, fp["strength_sigma"])
            coef[on:on + length, base + int(rng.integers(NUM_DISTRACTORS))] += s
    return ca.astype(np.float32), cv.astype(np.float32)


def _shared_dynamics(rng):
    """Per-segment structure common to sound and picture: shot index (10,) and activity (10,).

    Shot cuts (Poisson, at segment boundaries) change the scene of both modalities at once; the
    activity level (an AR(1) series: motion and loudness rise and fall together) drives a shared
    "energy" direction in every feature space.
    """
    fp = FEATURE_PARAMS
    n_cuts = min(int(rng.poisson(fp["shot_cut_rate"])), NUM_SEGMENTS - 1)
    cuts = np.sort(rng.choice(np.arange(1, NUM_SEGMENTS), size=n_cuts, replace=False))
    shot = np.searchsorted(cuts, np.arange(NUM_SEGMENTS), side="right")
    rho = fp["activity_rho"]
    z = rng.standard_normal(NUM_SEGMENTS)
    for t in range(1, NUM_SEGMENTS):
        z[t] = rho * z[t - 1] + np.sqrt(1 - rho ** 2) * z[t]
    return shot, z.astype(np.float32)


def _scene(rng, w, p, d, shot, activity):
    """(10, d) per-segment offset: the video's background, its shot changes, its activity."""
    shots = p["shot"] * _normal(rng, (int(shot[-1]) + 1, d))
    return _background(rng, w, p, d) + shots[shot] + p["activity"] * activity[:, None] * w["energy"]


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _background(rng, w, p, d):
    """A per-video offset: a mix of the space's shared nuisance directions plus a private part."""
    mix = _normal(rng, NUM_NUISANCE) @ w["nuisance"]
    return float(p["nuisance"] / np.sqrt(NUM_NUISANCE)) * mix + p["background"] * _normal(rng, d)


def render_video(world, audio, visual, rng):
    """Dense truth (25, 10) of each modality -> (vggish (10,128), res152 (80,2048), r2plus1d (10,512)) float32."""
    fp = FEATURE_PARAMS
    gain = fp["signal_gain"]
    ca, cv = _coefficients(rng, np.asarray(audio), np.asarray(visual))
    shot, activity = _shared_dynamics(rng)

    w, p, d = world["audio"], fp["audio"], SPACE_DIMS["audio"]
    x = _scene(rng, w, p, d, shot, activity) + (gain * p["signal"]) * (ca @ w["sig"])
    x += p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    vggish = p["scale"] * x

    w, p, d = world["video"], fp["video"], SPACE_DIMS["video"]
    frames = np.repeat(cv, 8, axis=0)                                                    # (80, K)
    frames *= np.maximum(1 + fp["frame_jitter"] * _normal(rng, frames.shape), 0.0)     # per-frame jitter
    seg = w["mean"] + _scene(rng, w, p, d, shot, activity) + p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    x = (gain * p["signal"]) * (frames @ w["sig"])
    x += p["frame_noise"] * _normal(rng, (8 * NUM_SEGMENTS, d))
    x = x.reshape(NUM_SEGMENTS, 8, d)
    x += seg[:, None, :]
    res152 = p["scale"] * np.maximum(x.reshape(8 * NUM_SEGMENTS, d), 0.0)

    w, p, d = world["st"], fp["st"], SPACE_DIMS["st"]
    x = w["mean"] + _scene(rng, w, p, d, shot, activity) + (gain * p["signal"]) * (cv @ w["sig"])
    x += p["noise"] * _normal(rng, (NUM_SEGMENTS, d))
    st = p["scale"] * np.maximum(x, 0.0)
    return vggish, res152, st


CHUNK = 16  # videos per rendering task
_WORLD_CACHE = {}


def render_chunk(seed, dtype, dirs, chunk):
    """Render and save the features of some videos; returns how many. Runs in worker processes too."""
    if seed not in _WORLD_CACHE:
        _WORLD_CACHE.clear()
        _WORLD_CACHE[seed] = build_world(seed)
    world, out_dtype = _WORLD_CACHE[seed], np.dtype(dtype)
    for split_code, i, name, audio, visual in chunk:
        arrays = render_video(world, audio, visual, rng_stream(seed, KEY_VIDEO, split_code, i))
        for key, arr in zip(("audio", "video", "st"), arrays):
            _save_npy(feature_path(dirs[key], video_id(name)), arr.astype(out_dtype))
    return len(chunk)


def auto_workers(n_videos):
    """Worker processes: one per CPU (at most 8), none for small sets (a process costs ~2 s to start)."""
    if n_videos < 300:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _save_npy(path, arr):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)
