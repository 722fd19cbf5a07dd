"""Decode a video the way the LLP features were made (docs/FEATURE_EXTRACTION.md), with PyAV.

Frames: ffmpeg's `-r 8` constant-frame-rate selection, emulated from the decoded frames'
timestamps, over the first 10 s (~82 frames), then 80 of them picked with np.linspace as HAN's
scripts did. Audio: 16 kHz mono, the first 10 s, and VGGish's log-mel front end (10 patches of
96 x 64). Frames are turned upright first as ffmpeg's autorotate turns them (the display matrix of
a phone video: quarter turns and flips). Videos shorter than 10 s are padded: frames by repeating
the last chosen frame, audio with silence, so segment i still covers second i.
"""
import os

import numpy as np
import torch

from .errors import AVVPError

SECONDS = 10                 # LLP clips: 10 one-second segments
FPS = 8                      # frames per second of the res152 features
FRAMES = SECONDS * FPS       # (80, 2048) res152 features per video
SAMPLE_RATE = 16000          # VGGish's input rate
WINDOW, HOP, FFT = 400, 160, 512   # 25 ms window, 10 ms hop, next power of two
MEL_BANDS, MEL_LO, MEL_HI = 64, 125.0, 7500.0
PATCH = 96                   # 0.96 s of 10 ms frames per VGGish patch, and its hop
CROP, RESIZE, CLIP_SIZE = 224, 256, 112
MAX_ASPECT = 4.0             # wider frames are cut to their central 4:1 part for res152 (frame_inputs)


def require_av():
    try:
        import av
    except ImportError:
        raise AVVPError("feature extraction needs PyAV, which is not installed: pip install -e .[extract]") from None
    return av


# ----------------------------------------------------------------------------- frames

class CFRSelector:
    """ffmpeg's constant-frame-rate output (its `-r 8` for image files), one input frame at a time.

    For each input frame at `t` seconds, ffmpeg compares t * fps with the number of frames
    written so far: a frame lagging more than 1.1 output frames is dropped, one ahead by more
    than 1.1 is written several times (the previous frame filling the gap), any other is written
    once. So a 10.03 s video at 29.92 fps gives 82 frames, not 80.
    """

    def __init__(self, in_fps, fps=FPS):
        self.fps = fps
        self.duration = min(fps / in_fps, 1.0) if in_fps else 1.0  # one input frame, in output frames
        self.count = 0

    def push(self, t):
        """(copies of the previous input frame, copies of this one) to write for a frame at t seconds."""
        delta0 = t * self.fps - self.count  # how far this frame is ahead of the output clock
        delta = delta0 + self.duration
        if delta < -1.1:
            n, n0 = 0, 0
        elif delta > 1.1:
            n = int(np.rint(delta))
            n0 = min(int(np.rint(delta0 - 0.6)), n) if delta0 > 1.1 else 0
        else:
            n, n0 = 1, 0
        self.count += n
        return n0, n - n0


def pick_frames(n, frames=FRAMES):
    """Indices of the `frames` frames HAN's scripts took out of n: np.round(np.linspace(0, n - 1, 80))."""
    return np.round(np.linspace(0, n - 1, frames)).astype(int)


def _rate(stream):
    rate = getattr(stream, "guessed_rate", None) or stream.average_rate or stream.base_rate
    return float(rate) if rate else 0.0


def display_matrix(frame):
    """The frame's display matrix (9,) int32, 16.16 fixed point (None when it has none): how a
    player must turn the picture (a portrait phone video is stored sideways)."""
    av = require_av()
    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return np.frombuffer(bytes(sd), dtype=np.int32)
    return None


def upright_ops(matrix):
    """What ffmpeg's autorotate does for this display matrix: a tuple of 'transpose', 'rot90cw',
    'rot90ccw', 'antitranspose', 'hflip', 'vflip' (empty: as stored), and a note for an angle
    that is not a multiple of 90 degrees (left as stored).

    Its rule: theta = -(the matrix's rotation, counter-clockwise degrees), wrapped to [0, 360);
    90: transpose 'cclock_flip' if m[3] > 0 else 'clock'; 180: hflip if m[0] < 0, vflip if m[4] < 0;
    270: 'clock_flip' if m[3] < 0 else 'cclock'; 0: vflip if m[4] < 0.
    """
    if matrix is None:
        return (), None
    m = matrix[:9].astype(np.float64) / 65536.0
    s0, s1 = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return (), "degenerate display matrix ignored"
    theta = -round(-np.degrees(np.arctan2(m[1] / s1, m[0] / s0)))
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return ("transpose",) if m[3] > 0 else ("rot90cw",), None
    if abs(theta - 180) < 1:
        return tuple(op for op, on in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if on), None
    if abs(theta - 270) < 1:
        return ("antitranspose",) if m[3] < 0 else ("rot90ccw",), None
    if abs(theta) < 1:
        return ("vflip",) if m[4] < 0 else (), None
    return (), f"display rotation of {theta:.0f} degrees ignored (only multiples of 90 are applied)"


def upright(rgb, ops):
    """(H, W, 3) -> the picture turned as upright_ops says (a view; (W, H, 3) after a quarter turn)."""
    for op in ops:
        rgb = {"transpose": lambda x: x.transpose(1, 0, 2), "rot90cw": lambda x: np.rot90(x, -1),
               "rot90ccw": lambda x: np.rot90(x, 1), "antitranspose": lambda x: np.rot90(x, -1)[::-1],
               "hflip": lambda x: x[:, ::-1], "vflip": lambda x: x[::-1]}[op](rgb)
    return rgb


def decode_frames(container, path, seconds=SECONDS, convert=None, skipped=None):
    """The video's frames chosen as `ffmpeg -r 8` does over its first `seconds`, turned upright as
    ffmpeg's autorotate turns them: a list of convert(rgb) of each (H, W, 3) uint8 RGB frame (~82
    for 10 s; a frame written twice is converted once), each one's input timestamp in seconds,
    and notes. convert=None keeps the RGB arrays; decode() converts each frame to the networks'
    small inputs at once, so a video never holds its full-size frames. Corrupt packets are skipped,
    their errors appended to `skipped`."""
    if not container.streams.video:
        raise AVVPError(f"{path}: no video stream")
    convert = convert or (lambda rgb: rgb)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start = container.start_time / 1e6 if container.start_time is not None else 0.0  # AV_TIME_BASE units
    select = CFRSelector(_rate(stream))
    frames, times, prev, notes = [], [], None, []
    ops = None
    skipped = [] if skipped is None else skipped
    for frame in decoded(container, stream, skipped):
        if frame.pts is None:
            continue
        t = float(frame.pts * frame.time_base) - start
        if t >= seconds:
            break
        if ops is None:  # one orientation per video, read off its first frame (as ffmpeg does)
            ops, note = upright_ops(display_matrix(frame))
            if note:
                notes.append(f"{path}: {note}")
        n0, n = select.push(t)
        if n0:  # the gap before this frame is filled with the previous input frame, written or not
            if prev[2] is None:
                prev[2] = convert(np.ascontiguousarray(upright(prev[0].to_ndarray(format="rgb24"), ops)))
            frames += [prev[2]] * n0
            times += [prev[1]] * n0
        item = None
        if n:
            item = convert(np.ascontiguousarray(upright(frame.to_ndarray(format="rgb24"), ops)))
            frames += [item] * n
            times += [t] * n
        prev = [frame, t, item]
    if not frames:
        raise AVVPError(f"{path}: no decodable video frame in the first {seconds} s")
    return frames, times, notes


def decoded(container, stream, skipped):
    """The stream's frames, decoded packet by packet: a packet the decoder rejects is skipped (its
    error appended to `skipped`) and decoding goes on, as ffmpeg's command line does."""
    av = require_av()
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError as e:
            skipped.append(" ".join(str(e).split())[:120])
            continue
        yield from frames


def chosen_frames(frames, frames_out=FRAMES):
    """The 80 frames of res152 out of the CFR frames: HAN's linspace pick from a full 10 s; a
    shorter video keeps its frames at 8 fps and repeats the last one (time stays aligned)."""
    if len(frames) >= frames_out:
        return [frames[i] for i in pick_frames(len(frames), frames_out)], False
    return frames + [frames[-1]] * (frames_out - len(frames)), True


# ----------------------------------------------------------------------------- audio

def decode_audio(container, path, seconds=SECONDS, skipped=None):
    """The first `seconds` of the first audio track at 16 kHz, channels averaged: (seconds*16000,)
    float32 in [-1, 1], zero-padded; None when the file has no audio track. Corrupt packets are
    skipped, their errors appended to `skipped`."""
    av = require_av()
    skipped = [] if skipped is None else skipped
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    start = container.start_time / 1e6 if container.start_time is not None else 0.0
    resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # keeps the channels; averaged below
    n = seconds * SAMPLE_RATE
    chunks, first, have = [], None, 0
    for frame in decoded(container, stream, skipped):
        if first is None and frame.pts is not None:
            first = float(frame.pts * frame.time_base) - start
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().mean(0))  # (channels, samples) -> (samples,)
            have += chunks[-1].size
        if have >= n + SAMPLE_RATE:  # enough, whatever the track's start offset
            break
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    lead = int(round((first or 0.0) * SAMPLE_RATE))  # a track starting late is padded in front
    wave = np.concatenate([np.zeros(lead, np.float32), wave]) if lead > 0 else wave[-lead:]
    out = np.zeros(n, np.float32)
    out[:min(n, wave.size)] = wave[:n]
    return out


def _mel_matrix():
    """(257, 64) triangular mel weights of VGGish (HTK mel scale, DC bin unused)."""
    def mel(hz):
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)
    bins = mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(mel(MEL_LO), mel(MEL_HI), MEL_BANDS + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins[:, None] - lo) / (mid - lo), (hi - bins[:, None]) / (hi - mid)))
    w[0] = 0.0
    return w


MEL = _mel_matrix()


def log_mel(wave):
    """(samples,) 16 kHz audio -> (frames, 64) log mel spectrogram, 25 ms window / 10 ms hop."""
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), WINDOW)[::HOP]  # (T, 400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * hann, FFT))  # (T, 257) magnitudes
    return np.log(spec @ MEL + 0.01)


def audio_patches(wave):
    """(160000,) audio -> (10, 96, 64) float32: VGGish's 0.96 s log-mel patches, hop 0.96 s."""
    mel_frames = log_mel(wave)  # (998, 64) for 10 s
    count = (len(mel_frames) - PATCH) // PATCH + 1
    return mel_frames[:count * PATCH].reshape(count, PATCH, MEL_BANDS).astype(np.float32)


# ----------------------------------------------------------------------------- network inputs

def resize(x, size):
    """(N, 3, H, W) uint8 -> (N, 3, *size) uint8, bilinear with antialiasing (like PIL's resize)."""
    y = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def frame_inputs(rgb):
    """One (H, W, 3) uint8 frame -> its (3, 224, 224) res152 and (3, 112, 112) r2plus1d_18 inputs, uint8.

    res152: shorter side to 256 then a centre crop of 224 (torchvision's Resize(256) +
    CenterCrop(224)); r2plus1d_18: squashed to 112 x 112 (HAN's Resize((112, 112))). A frame
    wider (or taller) than MAX_ASPECT : 1 is first cut to its central MAX_ASPECT : 1 part for res152:
    the 224 crop lies inside it, and the resized image stays at most 256 x 256 * MAX_ASPECT (a
    2 x 256 frame would otherwise be scaled to 256 x 32768).
    """
    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    cut = x
    if w > MAX_ASPECT * h:
        keep = int(MAX_ASPECT * h)
        cut = x[..., (w - keep) // 2:(w - keep) // 2 + keep]
    elif h > MAX_ASPECT * w:
        keep = int(MAX_ASPECT * w)
        cut = x[..., (h - keep) // 2:(h - keep) // 2 + keep, :]
    ch, cw = cut.shape[-2:]
    short = (RESIZE, int(RESIZE * cw / ch)) if ch <= cw else (int(RESIZE * ch / cw), RESIZE)
    top, left = int(round((short[0] - CROP) / 2.0)), int(round((short[1] - CROP) / 2.0))
    crop = resize(cut, short)[0, :, top:top + CROP, left:left + CROP]
    return crop, resize(x, (CLIP_SIZE, CLIP_SIZE))[0]


def write_png(rgb, path):
    """One (H, W, 3) uint8 frame as a PNG file (PyAV's encoder: no image library needed)."""
    av = require_av()
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")) + codec.encode(None)
    with open(path, "wb") as f:
        for p in packets:
            f.write(bytes(p))


def decode(path, dump_dir=None):
    """One video file -> dict of the networks' inputs (CPU tensors/arrays) and notes.

    images (80, 3, 224, 224) uint8, clips (80, 3, 112, 112) uint8, patches (10, 96, 64) float32,
    warnings (list of str). Raises AVVPError naming the file when it cannot be read. Memory: each
    frame becomes its two small inputs as it is decoded, so a video holds about 82 * 188 KB of them
    and one full frame at a time (with dump_dir, also the RGB frames it writes).
    """
    av = require_av()

    def convert(rgb):
        return frame_inputs(rgb) + ((rgb,) if dump_dir is not None else ())

    skipped = {"video": [], "audio": []}
    try:
        with av.open(path) as container:
            frames, _, notes = decode_frames(container, path, convert=convert, skipped=skipped["video"])
        with av.open(path) as container:
            wave = decode_audio(container, path, skipped=skipped["audio"])
    except av.FFmpegError as e:
        raise AVVPError(f"{path}: cannot decode ({e})") from None
    notes += [f"{path}: {len(errs)} corrupt {kind} packet(s) skipped (first: {errs[0]}), as ffmpeg skips them"
              for kind, errs in skipped.items() if errs]
    frames, padded = chosen_frames(frames)
    if padded:
        notes.append(f"{path}: shorter than {SECONDS} s of video; last frame repeated to {FRAMES} frames")
    if wave is None:
        notes.append(f"{path}: no audio track; audio features are those of silence")
        wave = np.zeros(SECONDS * SAMPLE_RATE, np.float32)
    if dump_dir is not None:
        os.makedirs(dump_dir, exist_ok=True)
        for i, f in enumerate(frames):
            write_png(f[2], os.path.join(dump_dir, f"{i + 1:06d}.png"))
    images = torch.stack([f[0] for f in frames])
    clips = torch.stack([f[1] for f in frames])
    return {"images": images, "clips": clips, "patches": audio_patches(wave), "warnings": notes}
