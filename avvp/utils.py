"""Small helpers every stage needs: errors, atomic writes, seeding, device choice."""
import contextlib
import functools
import gc
import os
import random
import re
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict

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


def run_program(main, fast_exit=False):
    """Run a command's main() as the program, with the garbage collector kept off long-lived objects.

    The modules imported before main() (importing torch alone leaves ~170,000 tracked objects)
    live until exit, yet every full collection walks them, and so does the interpreter's exit.
    gc.freeze() moves everything alive into the permanent generation, which collections skip:
    once before main() (the imports) and once after it (what the run built, whose files are
    written and closed by then). Measured on the 2-core CPU, stage 1 with --epochs 0 at LLP
    scale: last output line to process exit 1.04-1.06 s -> 0.26-0.27 s. Reference cycles
    frozen this way are never collected, so this is for a program's entry point only, never for
    a main() called inside a longer-lived process (tests, notebooks).

    fast_exit: once main() has returned (not on an error), flush stdout and stderr and end the
    process with os._exit(main's int, else 0), skipping the interpreter's teardown: module
    clean-up, atexit handlers, and on a GPU the CUDA context's destruction, which the driver
    does anyway when the process ends. Every file a stage writes is complete, fsynced and
    renamed by then, and its writer threads joined. Measured on the 2-core CPU, stage 1 with
    --epochs 0 at LLP scale: last output line to process exit 0.17-0.21 s -> 0.03 s.
    """
    gc.freeze()
    gc.enable()  # an entry script may have turned it off for its imports
    try:
        code = main()
    finally:
        gc.freeze()
    note = missing_bytecode_note()
    if note:
        print(note)
    if fast_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0)
    return code


def missing_bytecode_note(module="torch"):
    """A one-line note when `module` (imported by now) has no bytecode file where Python looks for
    one, None otherwise. Checked at the end of a run: if Python could write the file it has done so
    by then, so a missing one means that every process compiles the module from source again
    (torch: ~800 modules, 2.1 s per stage process on the fourth session's H200 machine)."""
    cached = getattr(sys.modules.get(module), "__cached__", None)
    if not cached or os.path.exists(cached):
        return None
    why = ("PYTHONDONTWRITEBYTECODE is set" if sys.dont_write_bytecode else
           f"Python could not write {os.path.dirname(cached)}")
    return (f"note: {module} has no bytecode ({cached} is missing, and {why}), so every run compiles it from "
            f"source again, seconds per process; benchmarks/precompile.py in this repository writes it once")


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
    group = getattr(_group, "pending", None)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if group is not None:  # inside atomic_group(): renamed with the others at its end
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


def _fsync_dir(folder):
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


_group = threading.local()


@contextlib.contextmanager
def atomic_group():
    """Files written with atomic_path inside this block (by this thread) replace their targets
    together at its end: each is written and fsynced to a temp file first, then all are renamed
    one after the other, so files that belong together (stage 2's label CSV, its evidence and its
    metadata) are never left half old, half new by an error, and by a kill only within the few
    microseconds of the renames. An error inside the block removes every temp file and changes
    no target."""
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


# ----------------------------------------------------------------------------- background saves

def _map_leaves(obj, fn, is_leaf):
    """A deep copy of a checkpoint's nested dicts/lists/tuples with fn applied to every leaf."""
    if is_leaf(obj):
        return fn(obj)
    if isinstance(obj, dict):
        new = type(obj)((k, _map_leaves(v, fn, is_leaf)) for k, v in obj.items())
        if getattr(obj, "__dict__", None):  # a state_dict's OrderedDict carries _metadata (versions)
            new.__dict__.update(obj.__dict__)
        return new
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_map_leaves(v, fn, is_leaf) for v in obj)
    return obj


def _host_copy(obj):
    """A deep copy of a checkpoint with every tensor copied to host memory, one copy per tensor."""
    return _map_leaves(obj, lambda t: t.detach().to("cpu", copy=True), torch.is_tensor)


class _Slot:
    """Stands for the i-th gathered tensor in a HostSnapshot's copy of the checkpoint."""
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


def _on_gpu(t):
    return t.is_cuda and t.layout == torch.strided and t.is_contiguous()


class HostSnapshot:
    """A checkpoint's state, taken now, for writing later (on another thread).

    The same values as _host_copy, in fewer operations: the GPU tensors of each (device, dtype)
    (a checkpoint's weights, Adam moments and steps: 120 tensors, 55 MB) are concatenated on the
    device and copied to pinned host memory in ONE asynchronous copy, queued on the current
    stream: later training steps, queued after it, cannot change what it reads, and the main
    thread does not wait for it. _host_copy instead made one synchronous device-to-host copy
    per tensor, each a round trip to the GPU (about 36 ms per epoch, by the fourth session's
    H200 figures: 0.54 s of "save" per training stage, less its two synchronous saves).
    resolve() waits for the copy and gives each tensor its own host storage, as _host_copy
    did, so torch.save writes the same bytes. Other tensors (CPU RNG states;
    non-contiguous ones) are copied at once, one by one; with copy_host=False host tensors are
    kept as they are (for a write made before anything can change them). `gather` picks the
    tensors that go through the one copy (tests use it to run that path on the CPU).
    """

    def __init__(self, obj, gather=_on_gpu, copy_host=True):
        tensors = []

        def take(t):
            t = t.detach()
            if gather(t):
                tensors.append(t)
                return _Slot(len(tensors) - 1)
            return t.to("cpu", copy=copy_host)

        self._tree = _map_leaves(obj, take, torch.is_tensor)
        self._pieces = [None] * len(tensors)  # (host buffer, offset, shape) per gathered tensor
        self._events = []
        groups = defaultdict(list)
        for i, t in enumerate(tensors):
            groups[(t.device, t.dtype)].append(i)
        with torch.no_grad():
            for (device, dtype), idx in groups.items():
                flat = torch.cat([tensors[i].reshape(-1) for i in idx])         # (sum of numel,) on device
                cuda = device.type == "cuda"
                host = torch.empty(flat.shape, dtype=dtype, pin_memory=cuda)  # pinned: the copy is async
                host.copy_(flat, non_blocking=cuda)
                if cuda:
                    event = torch.cuda.Event()
                    event.record(torch.cuda.current_stream(device))
                    self._events.append(event)
                offset = 0
                for i in idx:
                    self._pieces[i] = (host, offset, tensors[i].shape)
                    offset += tensors[i].numel()

    def resolve(self):
        """The snapshot as host tensors, each with its own storage (waits for the copy)."""
        for event in self._events:
            event.synchronize()

        def piece(slot):
            host, offset, shape = self._pieces[slot.i]
            return host[offset:offset + shape.numel()].view(shape).clone()

        return _map_leaves(self._tree, piece, lambda x: isinstance(x, _Slot))


class BackgroundSaver:
    """atomic_torch_save on one background thread, so training goes on while a checkpoint is
    serialised and fsynced. The object is snapshotted to host memory when save() is called
    (later training steps cannot change what is written). One write at a time, in call order:
    save() first waits for the previous write. A failed write raises AVVPError at the next
    save() or wait(); the file it targeted keeps its previous complete content (atomic_path).
    """

    def __init__(self):
        self._thread = None
        self._error = None

    def save(self, obj, path):
        self.wait()
        snapshot = HostSnapshot(obj)
        self._thread = threading.Thread(target=self._write, args=(snapshot, path), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snapshot, path):
        try:
            atomic_torch_save(snapshot.resolve(), path)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread by wait()
            self._error = e

    def wait(self):
        """Block until the pending write is on disk; re-raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


# ----------------------------------------------------------------------------- timing

def process_age():
    """Seconds since this process started (Linux /proc; None elsewhere): interpreter start-up and
    imports included, which an in-process timer cannot see."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PhaseClock:
    """Wall-clock seconds per phase of a run (load, train, val, ...), summed over calls, and
    printed as one `time:` line at the end so that a slow stage says where its time went."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds = defaultdict(float)
        self.last = 0.0  # duration of the most recent timed block, for per-epoch lines
        self.t0 = time.perf_counter()
        self.startup = process_age()  # interpreter + imports, up to this reset (a stage's setup())

    @contextlib.contextmanager
    def __call__(self, phase):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.last = time.perf_counter() - t
            self.seconds[phase] += self.last

    def line(self):
        total = time.perf_counter() - self.t0
        parts = [f"{k} {v:.2f}s" for k, v in self.seconds.items()]
        parts.append(f"other {max(total - sum(self.seconds.values()), 0.0):.2f}s")
        head = f"time: start-up {self.startup:.2f}s, " if self.startup is not None else "time: "
        total += self.startup or 0.0
        return head + ", ".join(parts) + f"; total {total:.2f}s"

    @staticmethod
    def parse(text):
        """The phases of the last `time:` line in `text` (a stage's output), as {phase: seconds}
        ('start-up', 'cuda init', 'swap passes', ..., 'total'); {} when there is none."""
        lines = re.findall(r"^time: (.*)$", text, flags=re.M)
        return {k: float(v) for k, v in re.findall(r"([a-z][a-z -]*?) ([\d.]+)s", lines[-1])} if lines else {}


clock = PhaseClock()
