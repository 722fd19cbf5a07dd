"""Bytecode for every module the stages import, where the Python install keeps none.

    python benchmarks/precompile.py            # say how many modules lack bytecode, then write it
    python benchmarks/precompile.py --check    # only say

Python runs a module from its cached bytecode (`__pycache__/*.pyc`) when that is current, and
otherwise compiles the source again on every import. pip writes the bytecode when it installs a
package; uv does not unless asked (`uv pip install --compile-bytecode`), and nothing writes it
later while PYTHONDONTWRITEBYTECODE is set. Then every stage process compiles about 800 modules of
torch and numpy before it starts: 2.1 s per process on the H200 machine of the fourth session
(cProfile: `builtins.compile`), 3.7 s on the 2-core CPU (README "How fast?").

This writes the missing files once, where the import system looks for them (py_compile, as pip
does). Where site-packages is read-only, set PYTHONPYCACHEPREFIX to a writable folder for this
script and for the stage runs alike.
"""
import argparse
import importlib
import importlib.util
import os
import py_compile
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a stage process imports, its lazy imports included (the CUDA graph, the scheduler)
STAGE_MODULES = ["avvp.engine", "avvp.parse", "avvp.optim", "avvp.model", "avvp.evaluate", "avvp.features",
                 "torch.cuda.graphs", "torch.optim.lr_scheduler", "tqdm"]


def imported_sources():
    """(source .py, where its bytecode belongs) for every module imported so far."""
    out, scripts = set(), str(ROOT / "benchmarks")
    for module in list(sys.modules.values()):
        src = getattr(module, "__file__", None)
        if src and src.endswith(".py") and os.path.isfile(src) and not src.startswith(scripts):
            out.add((src, importlib.util.cache_from_source(src)))
    return sorted(out)


def is_current(src, pyc):
    """Would the import system use `pyc` for `src`? (magic number, then the source's mtime and
    size recorded in a timestamp .pyc; a hash-based .pyc counts as present)."""
    try:
        with open(pyc, "rb") as f:
            head = f.read(16)
        st = os.stat(src)
    except OSError:
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(head[4:8], "little") & 1:
        return True
    return (int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)


def top_package(src):
    """'torch', 'numpy', ... for a source path (the folder under site-packages or the stdlib)."""
    parts = Path(src).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return parts[parts.index(anchor) + 1].removesuffix(".py")
    return "avvp" if str(ROOT) in src else "stdlib"


def stage_sources():
    sys.path.insert(0, str(ROOT))
    for name in STAGE_MODULES:
        importlib.import_module(name)
    return imported_sources()


def summary(sources, missing):
    by_pkg = Counter(top_package(src) for src, _ in missing)
    detail = ", ".join(f"{pkg} {n}" for pkg, n in by_pkg.most_common(6))
    return (f"bytecode: {len(missing)} of the {len(sources)} modules a stage imports have no current .pyc"
            + (f" ({detail}): every stage process compiles them again (benchmarks/precompile.py writes them)"
               if missing else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report, write nothing")
    args = p.parse_args()
    sources = stage_sources()
    missing = [(src, pyc) for src, pyc in sources if not is_current(src, pyc)]
    print(summary(sources, missing))
    if args.check or not missing:
        return 0
    t0, failed = time.perf_counter(), []
    for src, pyc in missing:
        try:
            py_compile.compile(src, cfile=pyc, doraise=True)
        except (OSError, py_compile.PyCompileError) as e:
            failed.append((src, e))
    print(f"wrote {len(missing) - len(failed)} .pyc files in {time.perf_counter() - t0:.1f} s"
          + (f" (prefix {sys.pycache_prefix})" if sys.pycache_prefix else ""))
    if failed:
        src, e = failed[0]
        print(f"could not write {len(failed)}, e.g. for {src}: {e}; where site-packages is read-only, set "
              f"PYTHONPYCACHEPREFIX to a writable folder here and for the stages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
