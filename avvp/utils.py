"""Small helpers every stage needs: errors, atomic writes, seeding, device choice."""
import contextlib
import functools
import os
import random
import sys
import tempfile
import warnings

import numpy as np
import torch


class AVVPError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def cli(main):
    """Wrap a command's main(): AVVPError and KeyboardInterrupt become one line and a non-zero exit."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        old_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
        try:
            return main(*args, **kwargs)
        except AVVPError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            warnings.formatwarning = old_format

    return wrapper


def one_line(msg):
    """A message on one line: inner newlines (e.g. from a library's exception text) become spaces."""
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {one_line(message)}\n"


def ensure_writable_dir(folder, what="output folder"):
    """Create `folder` if needed and check a file can be created in it, before any long work."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise AVVPError(f"{folder}: {what} is not writable ({e.strerror or e})") from None


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same folder as `path`; on success fsync it and rename over `path`.

    A crash or kill at any moment leaves either the old complete file or the new complete
    file, never a truncated one (rename within one folder is atomic on POSIX). On error the
    temp file is removed and the old file is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise AVVPError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise AVVPError(f"cannot write {path}: {e.strerror or e} (previous file left intact)") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    # make the rename itself durable
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
        # through a Python file object: a full disk is then an OSError (ENOSPC) that atomic_path
        # reports in one line; torch.save(obj, filename) would raise an opaque RuntimeError instead
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def seed_everything(seed):
    """One seed for python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name="auto"):
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise AVVPError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AVVPError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    return dev
