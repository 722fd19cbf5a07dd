"""Speed of `python -m avvp.extract`: videos per second, end to end, and where the time goes.

    python benchmarks/extract_speed.py                       # 8 videos on this machine's device
    python benchmarks/extract_speed.py --videos 64 --workers 16 --device cuda

Makes --videos synthetic 10 s clips at LLP's size (320 x 240, 25 fps, AAC audio) once in
--workdir, then runs the extractor on them as a user does (a subprocess; start-up and weight
loading included) with random weights: the same arithmetic as the published weights, which are
not downloaded here. Also times decoding alone (the worker side) and each network on one
video's inputs. Prints the figures and writes them to --json. LLP has 11,849 videos: the
projected time for it is the measured rate extrapolated.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avvp import extract, extract_media as media, extract_nets as nets  # noqa: E402
from avvp.config import ArgumentParser, number, resolve_device  # noqa: E402
from avvp.synth_video import make_clip  # noqa: E402

LLP_VIDEOS = 11849


def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=number(1, kind=int), default=8)
    p.add_argument("--workers", type=number(0, os.cpu_count() or 1, kind=int), default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_frames", type=number(8, 80 * 64, kind=int), default=160)
    p.add_argument("--workdir", default="/tmp/avvp_extract_speed")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    work = Path(args.workdir)
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for i in range(args.videos):
        path = clips / f"clip{i:05d}.mp4"
        if not path.exists():
            make_clip(path, size=(240, 320), tones=((0, 5, 300.0 + 50 * i), (5, 10, 1500.0 + 50 * i)))
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    out = {"device": name, "videos": args.videos, "workers": args.workers, "batch_frames": args.batch_frames}

    # decoding alone, in this process: what one worker does per video
    t = time.perf_counter()
    for path in sorted(clips.iterdir())[:4]:
        media.decode(str(path))
    out["decode_s_per_video"] = (time.perf_counter() - t) / min(4, args.videos)

    # the networks on one video's inputs (after a warm-up pass)
    run = extract.Extractor(nets.build(random_weights=True), device, args.batch_frames)
    decoded = [media.decode(str(next(iter(sorted(clips.iterdir())))))]
    run(decoded)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    run(decoded)
    sync()
    out["networks_s_per_video"] = time.perf_counter() - t

    # end to end, as a user runs it
    feats = work / "feats"
    shutil.rmtree(feats, ignore_errors=True)
    cmd = [sys.executable, "-m", "avvp.extract", str(clips), "--out", str(feats), "--random_weights", "--no_progress",
           "--device", str(device), "--workers", str(args.workers), "--batch_frames", str(args.batch_frames)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"extract failed: {r.stderr}")
    out.update(wall_s=wall, videos_per_s=args.videos / wall, llp_projected_min=LLP_VIDEOS / (args.videos / wall) / 60)
    print(f"{name}: {args.videos} videos in {wall:.1f} s = {out['videos_per_s']:.3f} videos/s end to end "
          f"({args.workers} workers, batch {args.batch_frames} frames); decode {out['decode_s_per_video']:.2f} s "
          f"and networks {out['networks_s_per_video']:.2f} s per video; LLP's {LLP_VIDEOS:,} videos: "
          f"~{out['llp_projected_min']:.0f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
