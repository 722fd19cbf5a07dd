"""Raw videos -> the three LLP feature folders, so `--mode parse --parse_dir` can parse them.

    python -m avvp.extract VIDEO_OR_FOLDER ... --out FEATS_DIR
    python main_avvp.py --mode parse --parse_dir FEATS_DIR      # from step1 or step3

Writes FEATS_DIR/vggish/<id>.npy (10, 128), res152/<id>.npy (80, 2048) and
r2plus1d_18/<id>.npy (10, 512), float32, <id> being the video file's stem (of an LLP-style name
`<11-character id>_<start>_<end>`, the id, as the released features are named), from the first 10 s
of each video, preprocessed as the released LLP features were (see avvp/extract_media.py).
Videos whose three files exist are skipped, so an interrupted run resumes. Decoding runs in
worker processes, the networks in batches on --device. Needs `pip install -e .[extract]` (PyAV).
"""
import concurrent.futures as cf
import multiprocessing
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from . import extract_media as media
from . import extract_nets as nets
from .config import ArgumentParser, number, resolve_device, seed_everything
from .errors import AVVPError, cli, one_line
from .features import MODALITIES
from .files import atomic_group, atomic_path, ensure_writable_dir
from .llp import video_id

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ogv", ".wmv")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KINETICS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
FOLDERS = {key: folder for key, (folder, _) in MODALITIES.items()}  # audio -> vggish, ...


def get_args(argv=None):
    p = ArgumentParser(description="Extract LLP-compatible vggish / res152 / r2plus1d_18 features from videos.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, or folders of them (not recursive)")
    p.add_argument("--out", required=True, help="feature root: writes OUT/vggish, OUT/res152, OUT/r2plus1d_18")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=number(0, kind=int), default=min(4, os.cpu_count() or 1),
                   help="decoding processes (0: decode in this process)")
    p.add_argument("--batch_frames", type=number(8, kind=int), default=160,
                   help="images per res152 forward pass (r2plus1d_18 takes a tenth as many clips)")
    p.add_argument("--weights_dir", default=None,
                   help="folder of the weight files (default: torch's hub cache, $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--download", action="store_true", help="fetch missing weight files from their published URLs")
    p.add_argument("--random_weights", action="store_true",
                   help="random networks instead of the published weights: for tests and smoke runs; the "
                        "features are meaningless")
    p.add_argument("--vggish_postprocess", action="store_true",
                   help="apply the AudioSet release's PCA whitening and 8-bit quantisation to the VGGish "
                        "embeddings (values 0-255; not how the LLP features were made)")
    p.add_argument("--dump_frames", default=None, metavar="DIR",
                   help="also write the 80 res152 frames of each video, as decoded, to DIR/<id>/000001.png ...")
    p.add_argument("--overwrite", action="store_true", help="extract videos whose three files exist too")
    p.add_argument("--seed", type=int, default=1, help="seeds the random networks of --random_weights")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def list_videos(inputs):
    """[(id, path)] sorted by id; a folder contributes its files with a video extension. Two
    videos with one stem would write the same files: an error naming both."""
    found = {}
    for item in inputs:
        if os.path.isdir(item):
            paths = [os.path.join(item, f) for f in sorted(os.listdir(item)) if f.lower().endswith(VIDEO_EXTENSIONS)]
            if not paths:
                raise AVVPError(f"{item}: folder holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
        elif os.path.isfile(item):
            paths = [item]
        else:
            raise AVVPError(f"{item}: no such file or folder")
        for path in paths:
            vid = video_id(os.path.splitext(os.path.basename(path))[0])  # LLP's <id>_<start>_<end> -> <id>
            if vid in found and os.path.abspath(found[vid]) != os.path.abspath(path):
                raise AVVPError(f"{path}: same id {vid!r} as {found[vid]} (the feature files are named by the stem)")
            found[vid] = path
    return sorted(found.items())


def output_paths(out, vid):
    return {key: os.path.join(out, folder, vid + ".npy") for key, folder in FOLDERS.items()}


def _init_worker():
    torch.set_num_threads(1)  # the workers decode in parallel; one thread each


def _decode(path, dump_dir):
    """In a worker: decode one video; an AVVPError comes back as its message (it names the file)."""
    try:
        return media.decode(path, dump_dir)
    except AVVPError as e:
        return one_line(e)


class Extractor:
    """The three networks on a device, run on the decoded inputs of several videos at once."""

    def __init__(self, networks, device, batch_frames):
        self.nets = {k: n.to(device) for k, n in networks.items()}
        self.device, self.batch = device, batch_frames
        self.norm = {k: (torch.tensor(m, device=device).view(1, 3, 1, 1), torch.tensor(s, device=device).view(1, 3, 1, 1))
                     for k, (m, s) in (("res152", IMAGENET), ("r2plus1d_18", KINETICS))}

    def _normalise(self, x, key):
        mean, std = self.norm[key]
        return (x.to(self.device, non_blocking=True).float() / 255.0 - mean) / std

    @torch.inference_mode()
    def __call__(self, decoded):
        """list of media.decode() dicts -> list of {audio, video, st} float32 arrays."""
        images = torch.cat([d["images"] for d in decoded])  # (V*80, 3, 224, 224) uint8
        clips = torch.cat([d["clips"] for d in decoded])  # (V*80, 3, 112, 112) uint8
        patches = torch.from_numpy(np.concatenate([d["patches"] for d in decoded]))  # (V*10, 96, 64)
        frames = [self.nets["res152"](self._normalise(images[i:i + self.batch], "res152"))
                  for i in range(0, len(images), self.batch)]
        # (V*10, 8, 3, 112, 112) -> (V*10, 3, 8, 112, 112): 10 clips of 8 consecutive frames per video
        clip_batch = self.batch // 8 * 8
        st = [self.nets["r2plus1d_18"](self._normalise(clips[i:i + clip_batch], "r2plus1d_18")
                                       .view(-1, 8, 3, media.CLIP_SIZE, media.CLIP_SIZE).transpose(1, 2))
              for i in range(0, len(clips), clip_batch)]
        audio = self.nets["vggish"](patches.to(self.device).unsqueeze(1))  # (V*10, 128)
        frames, st = torch.cat(frames).cpu().numpy(), torch.cat(st).cpu().numpy()
        audio = audio.float().cpu().numpy()
        return [{"audio": audio[v * 10:(v + 1) * 10], "video": frames[v * 80:(v + 1) * 80], "st": st[v * 10:(v + 1) * 10]}
                for v in range(len(decoded))]


def save(out, vid, feats):
    """The three files of one video, replaced together (never one new next to two old)."""
    with atomic_group():
        for key, path in output_paths(out, vid).items():
            arr = np.ascontiguousarray(feats[key], dtype=np.float32)
            assert arr.shape == MODALITIES[key][1], (key, arr.shape)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)


def decoded_stream(todo, args):
    """Yield (id, path, decode result) in order; decoding in worker processes, a few ahead."""
    dump = (lambda vid: os.path.join(args.dump_frames, vid)) if args.dump_frames else (lambda vid: None)
    if args.workers == 0:
        for vid, path in todo:
            yield vid, path, _decode(path, dump(vid))
        return
    ctx = multiprocessing.get_context("spawn")  # a forked torch is not safe to use
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker) as pool:
        ahead = 2 * args.workers
        futures = [pool.submit(_decode, path, dump(vid)) for vid, path in todo[:ahead]]
        for i, (vid, path) in enumerate(todo):
            if i + ahead < len(todo):
                nvid, npath = todo[i + ahead]
                futures.append(pool.submit(_decode, npath, dump(nvid)))
            yield vid, path, futures[i].result()
            futures[i] = None  # free the decoded frames


@cli
def main(argv=None):
    args = get_args(argv)
    media.require_av()
    videos = list_videos(args.inputs)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    if args.random_weights:
        print("warning: --random_weights: RANDOM NETWORKS, THE FEATURES ARE MEANINGLESS (tests and smoke runs only)",
              file=sys.stderr)
    networks = nets.build(args.random_weights, args.vggish_postprocess, args.weights_dir, args.download)
    for folder in FOLDERS.values():
        ensure_writable_dir(os.path.join(args.out, folder), "feature folder")
    finished = [not args.overwrite and all(map(os.path.isfile, output_paths(args.out, vid).values())) for vid, _ in videos]
    todo = [v for v, f in zip(videos, finished) if not f]
    print(f"{len(videos)} video(s): {len(todo)} to extract, {sum(finished)} already done; device {device}, "
          f"{args.workers} decoding worker(s)")
    extractor = Extractor(networks, device, args.batch_frames)
    batch_videos = max(1, args.batch_frames // media.FRAMES)
    failed, pending = [], []

    def flush():
        if not pending:
            return
        for (vid, _), feats in zip(pending, extractor([d for _, d in pending])):
            save(args.out, vid, feats)
        pending.clear()

    with tqdm(total=len(todo), desc="extract", unit="video", disable=args.no_progress) as bar:
        for vid, path, result in decoded_stream(todo, args):
            if isinstance(result, str):
                tqdm.write(f"error: {result}", file=sys.stderr)
                failed.append(path)
            else:
                for note in result.pop("warnings"):
                    tqdm.write(f"warning: {note}", file=sys.stderr)
                pending.append((vid, result))
                if len(pending) >= batch_videos:
                    flush()
            bar.update()
        flush()
    print(f"features of {len(todo) - len(failed)} video(s) written to {args.out}"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    main()
