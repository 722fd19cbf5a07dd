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
        frames, times = media.decode_frames(c, clips["tone"])
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
        frames, times = media.decode_frames(c, LLP_VIDEO)
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
    images, clip = media.network_inputs([frame] * 3)
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
    shutil.copy(clips["tone"], tmp_path / "other" / "BjCEufrlXm4_30_40.mp4")   # LLP-style: named by the id
    assert extract.list_videos([str(tmp_path / "other")])[0] == ("BjCEufrlXm4", str(tmp_path / "other" / "BjCEufrlXm4_30_40.mp4"))


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
