"""Feature extraction (avvp/extract*.py) on short clips made here with PyAV: the frame choice of
`ffmpeg -r 8`, the VGGish log-mel front end, padding, errors, resuming, and raw video -> parse.

The networks run with random weights (the published files are not downloaded in tests); their
parameter names are checked against torchvision's definitions where torchvision imports.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

av = pytest.importorskip("av")

from avvp import extract, extract_media as media, extract_nets as nets  # noqa: E402
from avvp.synth_video import FPS_IN, frame_index, make_clip  # noqa: E402
from avvp.errors import AVVPError  # noqa: E402

from conftest import ROOT, STAGE1, llp_file, run_stage  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IDS = {"tone": "tone_0_10", "mute": "mute_0_10", "short": "short_0_4"}  # the clips' feature ids (stems)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    # named like LLP's label files (<name>_<start>_<end>), so the round trip can score them
    out = {"tone": make_clip(d / "tone_0_10.mp4"), "mute": make_clip(d / "mute_0_10.mp4", audio=False),
           "short": make_clip(d / "short_0_4.mp4", seconds=4.0, tones=((0, 4, 1000.0),))}
    out["broken"] = d / "broken.mp4"
    out["broken"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    return out


# ----------------------------------------------------------------------------- frames

def test_cfr_selection_counts_and_timing():
    # a 10.03 s video at 29.92 fps (LLP's BjCEufrlXm4): ffmpeg -r 8 wrote 82 frames for it
    for fps, n_in, expected in ((359 / 12, 300, 82), (30.0, 300, 82), (25.0, 250, 82), (8.0, 80, 80)):
        select, chosen = media.CFRSelector(fps), []
        for k in range(n_in):
            n0, n = select.push(k / fps)
            chosen += [k - 1] * n0 + [k] * n
        assert len(chosen) == expected, fps
        # output frame j shows the input frame of time ~ j / 8: never more than ~1.5 frames off
        lag = np.array(chosen) / fps - np.arange(len(chosen)) / 8
        assert np.abs(lag).max() < 1.5 / 8, fps
        assert chosen == sorted(chosen)
    assert media.pick_frames(82).tolist()[:4] == [0, 1, 2, 3] and media.pick_frames(82)[-1] == 81
    assert len(media.pick_frames(82)) == 80 and len(set(media.pick_frames(82))) == 80


def test_frames_of_a_clip_follow_their_timestamps(clips):
    with av.open(str(clips["tone"])) as c:
        frames, times, _ = media.decode_frames(c, clips["tone"])
    assert len(frames) == 82 and frames[0].shape == (96, 128, 3) and frames[0].dtype == np.uint8
    index = np.rint(np.array(times) * FPS_IN).astype(int)   # input frame of each chosen frame
    assert [frame_index(f) for f in frames] == index.tolist()   # the pixels are those of that frame
    assert np.abs(index / FPS_IN - np.arange(82) / 8).max() < 1.5 / 8
    chosen, padded = media.chosen_frames(frames)
    assert len(chosen) == 80 and not padded
    picked = [frame_index(f) for f in chosen]
    assert picked == index[media.pick_frames(82)].tolist() and picked[-1] == 249


def test_llp_video_gives_ffmpegs_82_frames(tmp_path):
    LLP_VIDEO = llp_file("BjCEufrlXm4.mp4")
    with av.open(str(LLP_VIDEO)) as c:
        frames, times, _ = media.decode_frames(c, LLP_VIDEO)
    assert len(frames) == 82 and frames[0].shape == (240, 320, 3)
    # input frames (at 359/12 fps) ffmpeg -r 8 wrote for this video, read off its JPEGs
    index = np.rint(np.array(times) * 359 / 12).astype(int)
    assert index[:8].tolist() == [0, 1, 3, 7, 10, 14, 18, 22] and index[-3:].tolist() == [291, 295, 298]
    if shutil.which("ffmpeg") is None:
        return
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(LLP_VIDEO), "-r", "8", str(tmp_path / "%06d.png")],
                   check=True)
    ref = sorted(tmp_path.glob("*.png"))
    assert len(ref) == 82
    for mine, path in zip(frames, ref):
        with av.open(str(path)) as c:
            theirs = next(c.decode(video=0)).to_ndarray(format="rgb24")
        assert np.abs(mine.astype(float) - theirs).mean() < 2.0, path.name


# ----------------------------------------------------------------------------- audio

def test_log_mel_shows_the_tone_change_at_five_seconds(clips):
    with av.open(str(clips["tone"])) as c:
        wave = media.decode_audio(c, clips["tone"])
    assert wave.shape == (160000,) and wave.dtype == np.float32 and np.abs(wave).max() <= 1.0
    mel = media.log_mel(wave)                                  # (998, 64), 10 ms frames
    assert mel.shape == (998, 64)
    band = mel.argmax(1)

    def band_of(hz):  # the mel band whose triangle peaks nearest this frequency
        return int(media.MEL[int(round(hz / 8000 * 256))].argmax())

    assert band_of(440) < band_of(2000)
    assert (band[20:480] == band_of(440)).mean() > 0.95
    assert (band[520:980] == band_of(2000)).mean() > 0.95
    switch = int(np.argmax(band[:990] == band_of(2000)))
    assert abs(switch - 500) <= 4                              # at 5.00 s, within a few 10 ms frames
    patches = media.audio_patches(wave)
    assert patches.shape == (10, 96, 64) and patches.dtype == np.float32
    np.testing.assert_array_equal(patches[7], mel[7 * 96:8 * 96].astype(np.float32))


def test_short_and_silent_clips_are_padded(clips):
    short = media.decode(str(clips["short"]))
    assert any("shorter than 10 s" in w for w in short["warnings"])
    assert short["images"].shape == (80, 3, 224, 224) and short["clips"].shape == (80, 3, 112, 112)
    assert torch.equal(short["images"][-1], short["images"][40])       # the last real frame, repeated
    silence = np.float32(np.log(0.01))
    assert (short["patches"][5:] == silence).all()                     # 4 s of tone, then silence
    assert (short["patches"][:4] > silence).any(axis=(1, 2)).all()
    mute = media.decode(str(clips["mute"]))
    assert any("no audio track" in w for w in mute["warnings"]) and (mute["patches"] == silence).all()


def test_unreadable_file_is_an_error_naming_it(clips, tmp_path):
    with pytest.raises(AVVPError, match=str(clips["broken"])):
        media.decode(str(clips["broken"]))
    audio_only = tmp_path / "audio_only.m4a"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)
    with pytest.raises(AVVPError, match="no video stream"):
        media.decode(str(audio_only))


def test_network_inputs_resize_and_crop():
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, 320:] = 200                                       # right half bright
    pairs = [media.frame_inputs(frame) for _ in range(3)]
    images, clip = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    assert images.shape == (3, 3, 224, 224) and images.dtype == torch.uint8
    # 360x640 -> 256x455, centre crop: columns 115..339 of 455, the bright half starts at 227.5
    row = images[0, 0, 100].float()
    assert row[:110].max() == 0 and row[115:].min() == 200
    assert clip.shape == (3, 3, 112, 112) and clip[0, 0, 0, :55].max() == 0 and clip[0, 0, 0, 57:].min() == 200


def test_png_dump_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    media.write_png(rgb, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    with av.open(str(tmp_path / "f.png")) as c:
        np.testing.assert_array_equal(next(c.decode(video=0)).to_ndarray(format="rgb24"), rgb)


# ----------------------------------------------------------------------------- networks and weights

def test_networks_shapes_and_vggish_postprocess():
    torch.manual_seed(0)
    built = nets.build(random_weights=True)
    with torch.inference_mode():
        assert built["res152"](torch.randn(2, 3, 224, 224)).shape == (2, 2048)
        assert built["r2plus1d_18"](torch.randn(2, 3, 8, 112, 112)).shape == (2, 512)
        emb = built["vggish"](torch.randn(3, 1, 96, 64))
        assert emb.shape == (3, 128) and (emb >= 0).all()      # the conversion's ReLU'd embedding
        post = nets.VGGish(postprocess=True)
        post.load_state_dict(built["vggish"].state_dict())
        q = post.eval()(torch.randn(3, 1, 96, 64) * 100)
    assert q.min() >= 0 and q.max() <= 255 and torch.equal(q, q.round())


def test_published_weight_names_load(tmp_path):
    """Files named and keyed as the published ones (fc layers included) load into the networks."""
    torch.manual_seed(0)
    res, r21d, vgg = nets.ResNet152(), nets.R2Plus1D18(), nets.VGGish()
    sd = dict(res.state_dict(), **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(sd, tmp_path / "resnet152-394f9c45.pth")
    torch.save(dict(r21d.state_dict(), **{"fc.weight": torch.zeros(400, 512), "fc.bias": torch.zeros(400)}),
               tmp_path / "r2plus1d_18-91a641e6.pth")
    torch.save({k: v for k, v in vgg.state_dict().items() if not k.startswith("pca")}, tmp_path / "vggish-10086976.pth")
    torch.save({"pca_eigen_vectors": torch.eye(128).flip(0), "pca_means": torch.zeros(128)},
               tmp_path / "vggish_pca_params-970ea276.pth")
    built = nets.build(weights_dir=str(tmp_path), postprocess=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(built["res152"](x), res.eval()(x))
    assert torch.equal(built["vggish"].pca_eigen_vectors, torch.eye(128).flip(0))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet152-394f9c45.pth")
    with pytest.raises(AVVPError, match="resnet152-394f9c45.pth: does not fit"):
        nets.build(weights_dir=str(tmp_path))


def test_same_parameters_and_outputs_as_torchvision():
    try:
        from torchvision.models import resnet152
        from torchvision.models.video import r2plus1d_18
    except Exception as e:  # not installed, or its C ops do not match this torch build
        pytest.skip(f"torchvision not importable ({type(e).__name__})")
    for tv, mine, shape in ((resnet152(), nets.ResNet152(), (1, 3, 224, 224)),
                            (r2plus1d_18(), nets.R2Plus1D18(), (1, 3, 8, 112, 112))):
        mine.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, strict=True)
        tv.fc = torch.nn.Identity()
        x = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(mine.eval()(x), tv.eval()(x))


def test_missing_weights_name_each_file(tmp_path, monkeypatch, clips):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(AVVPError) as e:
        nets.find_weights(["res152", "r2plus1d_18", "vggish"])
    msg = str(e.value)
    for name, (files, url) in nets.WEIGHTS.items():
        if name != "vggish_pca":
            assert files[0] in msg and url in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg and "--download" in msg
    r = subprocess.run([sys.executable, "-m", "avvp.extract", str(clips["tone"]), "--out", str(tmp_path / "f")],
                       capture_output=True, text=True, env=dict(os.environ, TORCH_HOME=str(tmp_path / "torch_home")))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "resnet152-394f9c45.pth" in r.stderr
    assert not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------- the command

def run_extract(*argv):
    return subprocess.run([sys.executable, "-m", "avvp.extract", *map(str, argv), "--random_weights",
                           "--no_progress", "--device", "cpu"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


@pytest.fixture(scope="module")
def extracted(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    dump = out / "frames"
    r = run_extract(*(clips[k] for k in ("tone", "mute", "short", "broken")), "--out", out / "feats",
                    "--dump_frames", dump, "--workers", "2")
    return out / "feats", dump, r


def test_extract_writes_three_files_per_video(extracted, clips):
    feats, dump, r = extracted
    assert r.returncode == 2, r.stdout + r.stderr                   # one video failed, the others did not
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and str(clips["broken"]) in errors[0]
    assert "RANDOM NETWORKS" in r.stderr and "no audio track" in r.stderr and "shorter than 10 s" in r.stderr
    for folder, shape in (("vggish", (10, 128)), ("res152", (80, 2048)), ("r2plus1d_18", (10, 512))):
        assert sorted(p.name for p in (feats / folder).iterdir()) == [f"{IDS[k]}.npy" for k in ("mute", "short", "tone")]
        for vid in IDS.values():
            a = np.load(feats / folder / f"{vid}.npy")
            assert a.shape == shape and a.dtype == np.float32 and np.isfinite(a).all() and a.std() > 0
    # same frames, different sound: identical visual features, different audio ones
    np.testing.assert_array_equal(np.load(feats / "res152" / "tone_0_10.npy"), np.load(feats / "res152" / "mute_0_10.npy"))
    assert not np.allclose(np.load(feats / "vggish" / "tone_0_10.npy"), np.load(feats / "vggish" / "mute_0_10.npy"))
    for vid in IDS.values():
        pngs = sorted((dump / vid).iterdir())
        assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(1, 81)]
        assert pngs[0].read_bytes()[:8] == PNG_MAGIC
    with av.open(str(dump / "tone_0_10" / "000080.png")) as c:
        last = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert last.shape == (96, 128, 3) and frame_index(last) == 249     # the last frame, at full size


def test_extract_resumes(extracted, clips):
    feats, _, _ = extracted
    before = {p: p.stat().st_mtime_ns for p in feats.rglob("*.npy")}
    r = run_extract(clips["tone"], clips["mute"], clips["short"], "--out", feats, "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "0 to extract, 3 already done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in feats.rglob("*.npy")} == before


def test_extract_bad_inputs(tmp_path, clips):
    r = run_extract(tmp_path / "nope.mp4", "--out", tmp_path / "f")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.mp4'}: no such file or folder"
    (tmp_path / "other").mkdir()
    shutil.copy(clips["tone"], tmp_path / "other" / "tone_0_10.mp4")
    with pytest.raises(AVVPError, match="same id 'tone_0_10'"):
        extract.list_videos([str(clips["tone"]), str(tmp_path / "other")])
    assert extract.list_videos([str(tmp_path / "other")]) == [("tone_0_10", str(tmp_path / "other" / "tone_0_10.mp4"))]
    # an id is the file stem, whatever it looks like: these two are two videos
    shutil.copy(clips["tone"], tmp_path / "other" / "abcdefghijk_30_40.mp4")
    shutil.copy(clips["mute"], tmp_path / "other" / "abcdefghijk.mp4")
    assert [v for v, _ in extract.list_videos([str(tmp_path / "other")])] == ["abcdefghijk", "abcdefghijk_30_40",
                                                                             "tone_0_10"]
    shutil.copy(clips["tone"], tmp_path / "other" / "a\tb.mp4")
    r = run_extract(tmp_path / "other", "--out", tmp_path / "f")
    assert r.returncode == 2 and r.stderr.strip() == (f"error: {str(tmp_path / 'other' / 'a	b.mp4')!r}: the file name "
                                                      "holds a tab or line break, which the tab-separated tables cannot "
                                                      "hold: rename the file")
    assert not (tmp_path / "f").exists()


def test_extract_then_parse_then_evaluate(extracted, tiny_llp, tmp_path):
    """Raw video -> features -> a tiny stage-1 model's event tables -> avvp.evaluate reads them."""
    feats, _, _ = extracted
    models = tmp_path / "models"
    base = tiny_llp.args() + ["--model_save_dir", models, "--device", "cpu"]
    r = run_stage(STAGE1, ["--mode", "train", "--epochs", "1", "--batch_size", "8", "--lr", "3e-3", *base])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "parsed"
    r = run_stage(STAGE1, ["--mode", "parse", "--parse_dir", feats, "--parse_out", out, *base])
    assert r.returncode == 0, r.stderr
    probs = pd.read_csv(out / "video_probs.csv", sep="\t")
    assert sorted(probs["filename"].unique()) == sorted(IDS.values()) and len(probs) == 3 * 25
    assert probs[["video_prob", "audio_prob", "visual_prob"]].apply(lambda c: c.between(0, 1).all()).all()
    # truth for the three videos (one event each) in the LLP eval format, then the scorer
    (tmp_path / "weak.csv").write_text("filename\tevent_labels\n" + "".join(f"{v}\tSpeech\n" for v in IDS.values()))
    truth = "filename\tonset\toffset\tevent_labels\n" + "".join(f"{v}\t0\t10\tSpeech\n" for v in IDS.values())
    for kind in ("audio", "visual"):
        (tmp_path / f"eval_{kind}.csv").write_text(truth)
        assert pd.read_csv(out / f"pred_{kind}.csv", sep="\t").columns.tolist() == ["filename", "onset", "offset", "event_labels"]
    r = subprocess.run([sys.executable, "-m", "avvp.evaluate", "--label", tmp_path / "weak.csv",
                        "--eval_audio", tmp_path / "eval_audio.csv", "--eval_visual", tmp_path / "eval_visual.csv",
                        "--pred_audio", out / "pred_audio.csv", "--pred_visual", out / "pred_visual.csv", "--json"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert len(scores) == 10 and all(0 <= v <= 100 for v in scores.values())


# ----------------------------------------------------------------------------- orientation and odd sizes

# where ffmpeg 5.1's autorotate puts a clip's white top-left and grey top-right corners, per display
# matrix written by PyAV's set_display_rotation(degrees, hflip, vflip) (measured with `ffmpeg -i`)
FFMPEG_UPRIGHT = {(0, 0, 0): ("tl", "tr"), (0, 1, 0): ("tr", "tl"), (0, 0, 1): ("bl", "br"),
                  (90, 0, 0): ("bl", "tl"), (90, 1, 0): ("br", "tr"), (90, 0, 1): ("tl", "bl"),
                  (180, 0, 0): ("br", "bl"), (180, 1, 0): ("bl", "br"), (180, 0, 1): ("tr", "tl"),
                  (270, 0, 0): ("tr", "br"), (270, 1, 0): ("tl", "bl"), (270, 0, 1): ("br", "tr")}


def corner_clip(path, degrees, hflip, vflip):
    """A 2 s, 64 x 32 H.264 clip: white top-left corner, grey top-right, stored with a display matrix."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(degrees, hflip=bool(hflip), vflip=bool(vflip))
        img = np.zeros((32, 64, 3), np.uint8)
        img[:8, :8] = 255
        img[:8, 56:] = 128
        for _ in range(16):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def corners(img):
    g = img.mean(-1) if img.ndim == 3 else img
    return {"tl": g[2, 2], "tr": g[2, -3], "bl": g[-3, 2], "br": g[-3, -3]}


@pytest.mark.parametrize("orientation", sorted(FFMPEG_UPRIGHT))
def test_display_matrix_turns_frames_as_ffmpeg_autorotate_does(tmp_path, orientation):
    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV without libx264")
    path = corner_clip(tmp_path / "c.mp4", *orientation)
    with av.open(str(path)) as c:
        frames, _, notes = media.decode_frames(c, str(path))
    img = frames[0]
    quarter = orientation[0] in (90, 270)
    assert img.shape == ((64, 32, 3) if quarter else (32, 64, 3)) and notes == []
    got = corners(img)
    white, grey = FFMPEG_UPRIGHT[orientation]
    assert got[white] > 200 and 90 < got[grey] < 170
    assert sum(v > 200 for v in got.values()) == 1
    if shutil.which("ffmpeg"):                      # and the reference itself, where it is installed
        r = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe",
                            "-vcodec", "pgm", "-"], capture_output=True)
        head = r.stdout.split(b"\n", 3)
        w, h = map(int, head[1].split())
        ref = np.frombuffer(head[3], np.uint8).reshape(h, w)
        assert ref.shape == img.shape[:2]
        assert max(corners(ref), key=corners(ref).get) == white


def test_extreme_aspect_frames_stay_small_and_keep_their_centre():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (4, 2000, 3), dtype=np.uint8)          # 1 : 500; uncapped, 256 x 128000
    crop, clip = media.frame_inputs(wide)
    assert crop.shape == (3, 224, 224) and clip.shape == (3, 112, 112) and crop.dtype == torch.uint8
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    crop_t, _ = media.frame_inputs(tall)
    assert crop_t.shape == (3, 224, 224)
    # a 1 : 5 frame: capped to its central 4 : 1 part, the 224 crop still shows the same picture
    img = np.zeros((100, 500, 3), np.uint8)
    img[:, 240:260] = 255                                               # a bright centre stripe
    crop, _ = media.frame_inputs(img)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    full = media.resize(x, (256, 1280))[0, :, 16:240, 528:752]          # Resize(256) + CenterCrop(224), uncapped
    assert (crop.float() - full.float()).abs().mean() < 3.0
    assert crop[0, 112, 100:124].float().mean() > 200                   # the stripe sits in the middle


# ----------------------------------------------------------------------------- shards and manifest

def test_shard_rule_is_disjoint_complete_and_order_free():
    ids = [f"video{i:05d}" for i in range(1000)]
    owners = [[k for k in range(4) if extract.in_shard(v, k, 4)] for v in ids]
    assert all(len(o) == 1 for o in owners)
    counts = np.bincount([o[0] for o in owners], minlength=4)
    assert counts.min() > 200                                           # balanced enough
    assert [v for v in ids[::-1] if extract.in_shard(v, 2, 4)] == [v for v in ids if extract.in_shard(v, 2, 4)][::-1]
    assert extract.resolve_shard(None, {}) == (0, 1, None)
    assert extract.resolve_shard((1, 3), {"RANK": "0", "WORLD_SIZE": "2"}) == (1, 3, "--shard")
    assert extract.resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2, "torchrun")
    assert extract.resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                                        "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3, "Slurm array")
    with pytest.raises(AVVPError, match="SLURM_ARRAY_TASK_ID=7 is outside 0..2"):
        extract.resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3"})
    r = run_extract("x.mp4", "--out", "o", "--shard", "2/2")
    assert r.returncode == 2 and "--shard: 2/2: expected 0 <= K < N" in r.stderr


def test_two_torchrun_ranks_write_the_files_of_one_process_and_one_manifest(clips, tmp_path):
    """A rank that died is rerun alone; then torchrun's two ranks finish the rest. Same thread count
    (torchrun gives each rank one thread): byte-identical to one process."""
    videos = [clips["tone"], clips["mute"], clips["broken"]]   # tone: share 0 of 2; mute, broken: share 1
    assert [extract.in_shard(v, 1, 2) for v in ("tone_0_10", "mute_0_10", "broken")] == [False, True, True]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    common = ["--random_weights", "--no_progress", "--device", "cpu", "--workers", "0"]
    one = subprocess.run([sys.executable, "-m", "avvp.extract", *map(str, videos), "--out", str(tmp_path / "one"),
                          *common], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 2 and "broken.mp4" in one.stderr           # the broken file fails, the others do not
    many = tmp_path / "many"
    r = subprocess.run([sys.executable, "-m", "avvp.extract", *map(str, videos), "--out", str(many), "--shard", "1/2",
                        *common], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "broken.mp4" in r.stderr and "mute_0_10" in r.stderr
    assert not (many / "manifest.csv").exists() and (many / ".manifest" / "part-1-of-2.csv").is_file()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "avvp.extract",
                        *map(str, videos), "--out", str(many), *common], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr   # a rank's failed videos are in the manifest: no exit that stops the others
    out = r.stdout
    assert "2 video(s) (share 1/2, from torchrun): 1 to extract, 1 already done" in out   # the failed one again
    assert "1 video(s) (share 0/2, from torchrun): 1 to extract, 0 already done" in out
    for folder in ("vggish", "res152", "r2plus1d_18"):
        names = sorted(p.name for p in (tmp_path / "one" / folder).iterdir())
        assert names == ["mute_0_10.npy", "tone_0_10.npy"] == sorted(p.name for p in (many / folder).iterdir())
        for name in names:
            assert (many / folder / name).read_bytes() == (tmp_path / "one" / folder / name).read_bytes()
    manifest = pd.read_csv(many / "manifest.csv", sep="\t", keep_default_na=False)
    assert manifest.equals(pd.read_csv(tmp_path / "one" / "manifest.csv", sep="\t", keep_default_na=False))
    assert manifest["id"].tolist() == ["broken", "mute_0_10", "tone_0_10"]
    assert manifest["status"].tolist() == ["failed", "done", "done"]
    assert "cannot decode" in manifest["reason"][0] or "no decodable" in manifest["reason"][0]
    assert (many / manifest["source"][1]).resolve() == clips["mute"].resolve()
    r = run_extract("--merge", "--out", many)
    assert r.returncode == 0 and r.stdout.strip() == f"{many / 'manifest.csv'}: 3 video(s)"
