"""Synthetic video clips with known content, for the extractor's tests and its speed benchmark.

Frame i of a clip shows its index twice: brightness i in the top rows, and a white bar at
columns 2i, 2i + 1 (mod the width) below, so frame_index() reads back which frame an image is.
Its audio is a sine tone whose frequency changes at given seconds.
"""
from pathlib import Path

import numpy as np

from .extract_media import require_av

FPS_IN = 25  # 250 frames in 10 s: each frame's index fits in one brightness byte


def make_clip(path, seconds=10.0, audio=True, tones=((0, 5, 440.0), (5, 10, 2000.0)), size=(96, 128)):
    """A clip whose frame i has brightness i in its top rows and a white bar at columns 2i, 2i + 1
    (mod 128), with a
    tone of 440 Hz in the first 5 s and 2000 Hz after (44.1 kHz AAC)."""
    h, w = size
    rate = 44100
    av = require_av()
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=FPS_IN)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"qscale": "1"}
        if audio:
            astream = c.add_stream("aac", rate=rate)
            astream.layout = "mono"
        for i in range(int(round(seconds * FPS_IN))):
            img = np.zeros((h, w, 3), np.uint8)
            img[:16] = i
            img[32:, (2 * i) % w:(2 * i) % w + 2] = 255
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            t = np.arange(int(seconds * rate)) / rate
            hz = np.zeros_like(t)
            for a, b, f in tones:
                hz[(t >= a) & (t < b)] = f
            wave = (0.5 * np.sin(2 * np.pi * np.cumsum(hz) / rate)).astype(np.float32)
            for i in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="fltp", layout="mono")
                frame.sample_rate = rate
                for p in astream.encode(frame):
                    c.mux(p)
            for p in astream.encode():
                c.mux(p)
    return Path(path)


def frame_index(img):
    """The clip frame an image shows: the bar gives i mod 64 exactly, the brightness the rest."""
    bright = np.flatnonzero(img[32:].mean((0, 2)) > 128)   # the bar's two columns
    fine = int(round(bright.mean() - 0.5)) // 2           # i mod 64
    coarse = img[:16].mean()
    return min(range(fine, 256, 64), key=lambda i: abs(i - coarse))
