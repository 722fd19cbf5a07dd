"""Raw videos -> the three LLP feature folders, so `--mode parse --parse_dir` can parse them.

    python -m avvp.extract VIDEO_OR_FOLDER ... --out FEATS_DIR
    python main_avvp.py --mode parse --parse_dir FEATS_DIR      # from step1 or step3

Writes FEATS_DIR/vggish/<id>.npy (10, 128), res152/<id>.npy (80, 2048) and
r2plus1d_18/<id>.npy (10, 512), float32, <id> being the video file's stem, from the first 10 s
of each video, preprocessed as the released LLP features were (see avvp/extract_media.py), and
FEATS_DIR/manifest.csv: each id's source file (relative to FEATS_DIR) and status (done, or
failed with the reason). Videos whose three files exist are skipped, so an interrupted run
resumes. Decoding runs in worker processes, the networks in batches on --device.

Many videos: several processes each take a disjoint share (videos whose id hashes to K mod N),
started by torchrun (`torchrun --nproc_per_node G -m avvp.extract ...`: RANK / WORLD_SIZE, one
GPU per LOCAL_RANK), a Slurm job array (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) or
`--shard K/N`. Each writes FEATS_DIR/.manifest/part-K-of-N.csv; the last one to finish (or
`--merge`) joins the parts into manifest.csv. Needs `pip install -e .[extract]` (PyAV).
"""
import argparse
import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from . import extract_media as media
from . import extract_nets as nets
from .config import SEED, ArgumentParser, number, resolve_device, seed_everything
from .errors import AVVPError, cli, one_line
from .features import MANIFEST, MANIFEST_COLUMNS, MODALITIES, read_manifest
from .files import atomic_group, atomic_path, ensure_writable_dir
from .llp import write_tsv

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ogv", ".wmv")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KINETICS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
FOLDERS = {key: folder for key, (folder, _) in MODALITIES.items()}  # audio -> vggish, ...
PARTS_DIR = ".manifest"  # the shards' manifest parts, joined into manifest.csv


def get_args(argv=None):
    p = ArgumentParser(description="Extract LLP-compatible vggish / res152 / r2plus1d_18 features from videos.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, or folders of them (not recursive)")
    p.add_argument("--out", required=True,
                   help="feature root: writes OUT/vggish, OUT/res152, OUT/r2plus1d_18 and OUT/manifest.csv")
    p.add_argument("--device", default="auto",
                   help="auto (cuda:LOCAL_RANK under torchrun, else cuda when present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="K/N",
                   help="extract only share K (0-based) of N: the videos whose id hashes to K mod N (default: "
                        "from torchrun's RANK / WORLD_SIZE or a Slurm array's task id and count, else 0/1)")
    p.add_argument("--merge", action="store_true",
                   help="only join the shards' manifest parts (OUT/.manifest/) into OUT/manifest.csv")
    p.add_argument("--workers", type=number(0, os.cpu_count() or 1, kind=int), default=min(4, os.cpu_count() or 1),
                   help="decoding processes (0: decode in this process; at most one per CPU)")
    p.add_argument("--batch_frames", type=number(8, 80 * 64, kind=int), default=160,
                   help="images per res152 forward pass (r2plus1d_18 takes a tenth as many clips; at most 64 "
                        "videos' 5120)")
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
    p.add_argument("--seed", type=SEED, default=1,
                   help="seeds the random networks of --random_weights")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def list_videos(inputs):
    """[(id, path)] sorted by id, the id being the file's stem; a folder contributes its files with
    a video extension. Two videos with one stem would write the same files: an error naming both."""
    found = {}
    for item in inputs:
        if os.path.isdir(item):
            paths = [os.path.join(item, f) for f in sorted(os.listdir(item)) if f.lower().endswith(VIDEO_EXTENSIONS)
                     and not os.path.isdir(os.path.join(item, f))]
            if not paths:
                raise AVVPError(f"{item}: folder holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
        elif os.path.isfile(item):
            paths = [item]
        else:
            raise AVVPError(f"{item}: no such file or folder")
        for path in paths:
            vid = os.path.splitext(os.path.basename(path))[0]
            if any(c in vid for c in "\t\n\r"):
                raise AVVPError(f"{path!r}: the file name holds a tab or line break, which the tab-separated "
                                "tables cannot hold: rename the file")
            if vid in found and os.path.abspath(found[vid]) != os.path.abspath(path):
                raise AVVPError(f"{path}: same id {vid!r} as {found[vid]} (the feature files are named by the stem)")
            found[vid] = path
    return sorted(found.items())


# ----------------------------------------------------------------------------- shards and manifest

def shard_arg(text):
    """argparse type of --shard K/N: (k, n) with 0 <= k < n."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 0/4)") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 <= K < N")
    return k, n


def resolve_shard(shard, env):
    """(k, n, who set it): --shard, else torchrun's RANK / WORLD_SIZE, else a Slurm job array's
    SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT, else (0, 1)."""
    if shard is not None:
        return shard + ("--shard",)
    for who, rank, size, base in (("torchrun", "RANK", "WORLD_SIZE", None),
                                  ("Slurm array", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")):
        if size in env:
            try:
                k = int(env[rank]) - (int(env.get(base, 0)) if base else 0)
                n = int(env[size])
            except (KeyError, ValueError):
                raise AVVPError(f"{size}={env.get(size)!r} but {rank}={env.get(rank)!r}: cannot tell this process's "
                                "share (use --shard K/N)") from None
            if not 0 <= k < n:
                raise AVVPError(f"{rank}={env.get(rank)} is outside 0..{n - 1} ({size}={n}); use --shard K/N")
            return k, n, who
    return 0, 1, None


def in_shard(vid, k, n):
    """Whether video `vid` is share k's of n: a hash of the id alone, so every process agrees,
    whatever order or subset of the inputs it was given."""
    return int.from_bytes(hashlib.sha1(vid.encode("utf-8")).digest()[:8], "big") % n == k


def manifest_rows(out, results):
    """results [(id, path, status, reason)] -> rows with the source relative to `out`."""
    root = os.path.abspath(out)
    return [{"id": vid, "source": os.path.relpath(os.path.abspath(path), root), "status": status, "reason": reason}
            for vid, path, status, reason in results]


def write_rows(rows, path):
    """Manifest rows (dicts of MANIFEST_COLUMNS) as a tab-separated file, atomically."""
    write_tsv({c: [r[c] for r in rows] for c in MANIFEST_COLUMNS}, path)


def write_manifest(out, rows):
    """manifest.csv updated with `rows` (an id's newest row replaces its older one), atomically."""
    table = {r["id"]: r for r in read_manifest(out)}
    table.update((r["id"], r) for r in rows)
    write_rows([table[v] for v in sorted(table)], os.path.join(out, MANIFEST))


def part_path(out, k, n):
    return os.path.join(out, PARTS_DIR, f"part-{k}-of-{n}.csv")


def merge_parts(out, n=None):
    """Join the parts of N shards into manifest.csv when all N are there (n=None: every N found,
    joined as far as they go). Returns the list of (k, n) parts missing."""
    folder = os.path.join(out, PARTS_DIR)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    found = {}
    for name in names:
        try:
            k, n_found = (int(x) for x in name[len("part-"):-len(".csv")].split("-of-"))
        except ValueError:
            continue
        found.setdefault(n_found, set()).add(k)
    missing, rows = [], []
    for n_found in sorted(found) if n is None else [n]:
        lack = [(k, n_found) for k in range(n_found) if k not in found.get(n_found, ())]
        if lack and n is not None:
            return lack
        missing += lack
        for k in sorted(found.get(n_found, ())):
            rows += read_manifest(out, part_path(out, k, n_found))
    write_manifest(out, rows)
    return missing


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

    def _r2plus1d(self, frames, clips):
        """(8n, 3, 112, 112) frames -> (n, 512): n clips of 8, run as a batch of `clips` (zero clips
        fill it). Torch's 3D convolutions on the CPU change algorithm with the batch size (10 and 20
        clips give different float roundings), so a video's features would depend on how many
        videos shared its batch, and so on how the videos were split across processes."""
        x = self._normalise(frames, "r2plus1d_18").view(-1, 8, 3, media.CLIP_SIZE, media.CLIP_SIZE)
        n = len(x)
        if n < clips:
            x = torch.cat([x, x.new_zeros((clips - n,) + x.shape[1:])])
        return self.nets["r2plus1d_18"](x.transpose(1, 2))[:n]

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
        st = [self._r2plus1d(clips[i:i + clip_batch], clip_batch // 8) for i in range(0, len(clips), clip_batch)]
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


def decoded_stream(todo, workers, dump_frames=None):
    """Yield (id, path, decode result) in order; decoding in `workers` processes, a few ahead."""
    dump = (lambda vid: os.path.join(dump_frames, vid)) if dump_frames else (lambda vid: None)
    if workers == 0:
        for vid, path in todo:
            yield vid, path, _decode(path, dump(vid))
        return
    ctx = multiprocessing.get_context("spawn")  # a forked torch is not safe to use
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        ahead = 2 * workers
        futures = [pool.submit(_decode, path, dump(vid)) for vid, path in todo[:ahead]]
        for i, (vid, path) in enumerate(todo):
            if i + ahead < len(todo):
                nvid, npath = todo[i + ahead]
                futures.append(pool.submit(_decode, npath, dump(nvid)))
            yield vid, path, futures[i].result()
            futures[i] = None  # free the decoded frames


def shard_device(name, who, env):
    """--device auto under torchrun: this rank's GPU (LOCAL_RANK), when there are GPUs."""
    if name == "auto" and who == "torchrun" and torch.cuda.is_available():
        local = int(env.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise AVVPError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): start at "
                            "most that many processes per node (torchrun --nproc_per_node)")
        return torch.device(f"cuda:{local}")
    return resolve_device(name)


def extract(todo, out, extractor, workers, dump_frames, progress):
    """Decode and extract `todo` [(id, path)], writing each video's three files; returns
    [(id, path, 'done' | 'failed', reason)]."""
    batch_videos = max(1, extractor.batch // media.FRAMES)
    results, pending = [], []

    def flush():
        if not pending:
            return
        for (vid, path, _), feats in zip(pending, extractor([d for _, _, d in pending])):
            save(out, vid, feats)
            results.append((vid, path, "done", ""))
        pending.clear()

    with tqdm(total=len(todo), desc="extract", unit="video", disable=not progress) as bar:
        for vid, path, result in decoded_stream(todo, workers, dump_frames):
            if isinstance(result, str):
                tqdm.write(f"error: {result}", file=sys.stderr)
                results.append((vid, path, "failed", result))
            else:
                for note in result.pop("warnings"):
                    tqdm.write(f"warning: {note}", file=sys.stderr)
                pending.append((vid, path, result))
                if len(pending) >= batch_videos:
                    flush()
            bar.update()
        flush()
    return results


@cli
def main(argv=None):
    args = get_args(argv)
    if args.merge:
        if not os.path.isdir(os.path.join(args.out, PARTS_DIR)):
            raise AVVPError(f"{os.path.join(args.out, PARTS_DIR)}: no shard manifests to merge (written by runs with "
                            "--shard, torchrun or a Slurm array)")
        missing = merge_parts(args.out)
        print(f"{os.path.join(args.out, MANIFEST)}: {len(read_manifest(args.out))} video(s)"
              + (f"; parts missing: {', '.join(f'{k}/{n}' for k, n in missing)}" if missing else ""))
        return
    if not args.inputs:
        raise AVVPError("no INPUT given: name video files or folders (or --merge the shards' manifests)")
    k, n, who = resolve_shard(args.shard, os.environ)
    media.require_av()
    videos = [v for v in list_videos(args.inputs) if in_shard(v[0], k, n)]
    device = shard_device(args.device, who, os.environ)
    seed_everything(args.seed)
    if args.random_weights:
        print("warning: --random_weights: RANDOM NETWORKS, THE FEATURES ARE MEANINGLESS (tests and smoke runs only)",
              file=sys.stderr)
    networks = nets.build(args.random_weights, args.vggish_postprocess, args.weights_dir, args.download)
    for folder in FOLDERS.values():
        ensure_writable_dir(os.path.join(args.out, folder), "feature folder")
    if args.dump_frames:
        ensure_writable_dir(args.dump_frames, "--dump_frames folder")
    finished = [not args.overwrite and all(map(os.path.isfile, output_paths(args.out, vid).values())) for vid, _ in videos]
    todo = [v for v, f in zip(videos, finished) if not f]
    share = f" (share {k}/{n}, from {who})" if n > 1 else ""
    print(f"{len(videos)} video(s){share}: {len(todo)} to extract, {sum(finished)} already done; device {device}, "
          f"{args.workers} decoding worker(s)")
    results = extract(todo, args.out, Extractor(networks, device, args.batch_frames), args.workers,
                      args.dump_frames, not args.no_progress)
    results += [(vid, path, "done", "") for (vid, path), f in zip(videos, finished) if f]
    rows = manifest_rows(args.out, sorted(results))
    if n == 1:
        write_manifest(args.out, rows)
    else:
        write_rows(rows, part_path(args.out, k, n))
        missing = merge_parts(args.out, n)
        print(f"share {k}/{n} listed in {part_path(args.out, k, n)}; " + (
            f"{os.path.join(args.out, MANIFEST)} joins all {n} parts" if not missing else
            f"manifest.csv follows when the last of the other {len(missing)} share(s) ends (or run --merge)"))
    failed = [path for _, path, status, _ in results if status == "failed"]
    print(f"features of {len(todo) - len(failed)} video(s) written to {args.out}"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    # under torchrun a rank's non-zero exit stops every other rank mid-video: its failures are in
    # the manifest instead
    if failed and who != "torchrun":
        sys.exit(2)


if __name__ == "__main__":
    main()
