"""Atomic file writes: a crash or kill leaves the old complete file or the new one, never half of one."""
import contextlib
import os
import tempfile
import threading

import torch

from .errors import AVVPError


def ensure_writable_dir(folder, what="output folder"):
    """Create `folder` if needed and check a file can be created in it, before any long work."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise AVVPError(f"{folder}: {what} is not writable ({e.strerror or e})") from None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
_group = threading.local()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same folder as `path`; on success fsync it and rename over `path`.

    Rename within one folder is atomic on POSIX. On error the temp file is removed and the old
    file is untouched. Inside atomic_group() the rename waits for the end of the group.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise AVVPError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    group = getattr(_group, "pending", None)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if group is not None:
            group.append((tmp, path))
            return
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise AVVPError(f"cannot write {path}: {e.strerror or e} (previous file left intact)") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(folder)  # make the rename itself durable


@contextlib.contextmanager
def atomic_group():
    """Files written with atomic_path inside this block replace their targets together at its end.

    Each is written and fsynced to a temp file first, then all are renamed one after the other, so
    files that belong together (stage 2's label CSV, its evidence and its metadata) are never left
    half old, half new by an error. An error inside the block changes no target.
    """
    if getattr(_group, "pending", None) is not None:  # nested: the outer group renames
        yield
        return
    pending = _group.pending = []
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            _remove_quietly(tmp)
        raise
    finally:
        _group.pending = None
    for i, (tmp, path) in enumerate(pending):
        try:
            os.replace(tmp, path)
        except OSError as e:
            for t, _ in pending[i:]:
                _remove_quietly(t)
            raise AVVPError(f"cannot write {path}: {e.strerror or e} ({i} of the {len(pending)} files "
                            f"written together were already replaced)") from None
    for folder in {os.path.dirname(os.path.abspath(p)) for _, p in pending}:
        _fsync_dir(folder)


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        # through a file object: a full disk is then an OSError (ENOSPC) that atomic_path reports in
        # one line; torch.save(obj, filename) would raise an opaque RuntimeError instead
        with open(tmp, "wb") as f:
            torch.save(obj, f)
