"""Execute the book's notebooks into its execution cache, several at a time.

Usage: python scripts/execute_notebooks.py [--jobs N] [--list] [NOTEBOOK.ipynb ...]

``jupyter-book build`` (``execute_notebooks: cache``) executes every notebook its cache does
not hold, one after the other, although each runs in its own kernel. This script fills the
same cache (``_build/.jupyter_cache``) first, ``--jobs`` notebooks at a time (default: one per
CPU core), exactly as the build would execute them (a fresh ``python3`` kernel each, in the
notebook's folder, the timeout of ``_config.yml``, no error allowed); the build then takes
every output from the cache, and writes each executed notebook to ``_build/jupyter_execute/``,
where ``tests/test_notebook_outputs.py`` compares the cells nbval checks.

The cache sees changes to a notebook's code, not to the package it imports. So the script
keeps a fingerprint of ``lib/scorelab`` beside the cache; when the package has changed since
the cache was filled, it empties the cache and the build's environment (``_build/.doctrees``,
``_build/jupyter_execute``), and every notebook is executed and rendered again.

The exit status is 1 when a notebook raises (its traceback is printed; it is not cached).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
BUILD = ROOT / "_build"
CACHE = BUILD / ".jupyter_cache"
FINGERPRINT = CACHE / "scorelab-package.sha256"
PACKAGE = ROOT / "lib" / "scorelab"


def package_fingerprint() -> str:
    """SHA-256 of every file of ``lib/scorelab`` (path and bytes), caches excluded."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def book_notebooks() -> list[Path]:
    """The notebooks of ``_toc.yml`` (paths relative to the root, as the build reads them)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def collect(entries) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                collect(entry.get(key))

    collect([toc])
    return [ROOT / f"{name}.ipynb" for name in files if (ROOT / f"{name}.ipynb").is_file()]


def _execute(path: str, timeout: int, threads: int) -> tuple[str, float, str | None]:
    """Execute one notebook (in a worker process): its executed JSON, seconds, error text.

    The kernel inherits ``OMP_NUM_THREADS=threads``, so that the notebooks running at once
    do not ask for more threads than there are cores (the chapters use one thread anyway).
    """
    from jupyter_cache.executors.utils import single_nb_execution

    os.environ["OMP_NUM_THREADS"] = str(threads)
    notebook = nbformat.read(path, as_version=4)
    result = single_nb_execution(notebook, cwd=str(Path(path).parent), timeout=timeout,
                                 allow_errors=False, meta_override=True)
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return nbformat.writes(notebook), result.time, error


def _reset_if_package_changed() -> None:
    fingerprint = package_fingerprint()
    if CACHE.exists() and (not FINGERPRINT.exists() or FINGERPRINT.read_text() != fingerprint):
        print("lib/scorelab changed since the notebooks were executed: executing them again")
        for stale in (CACHE, BUILD / ".doctrees", BUILD / "jupyter_execute"):
            shutil.rmtree(stale, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    FINGERPRINT.write_text(fingerprint)


def main(argv: list[str]) -> int:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="notebooks executed at once (default: the number of CPU cores)")
    parser.add_argument("--list", action="store_true", help="print the notebooks and exit")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="only these (default: every notebook of _toc.yml)")
    args = parser.parse_args(argv)
    notebooks = [p.absolute() for p in args.notebooks] or book_notebooks()
    if args.list:
        print("\n".join(os.path.relpath(p, ROOT) for p in notebooks))
        return 0
    timeout = int(yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["timeout"])
    _reset_if_package_changed()
    cache = get_cache(str(CACHE))
    missing = [p for p in notebooks if not _cached(cache, p)]
    # Longest first (the later chapters, then their solutions), so the workers finish together.
    missing.sort(key=lambda p: (p.parent == BOOK, p.name), reverse=True)
    print(f"{len(notebooks) - len(missing)} notebooks cached, executing {len(missing)} "
          f"with {args.jobs} at a time")
    failed = []
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max(1, args.jobs), mp_context=context) as pool:
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        futures = {pool.submit(_execute, str(p), timeout, threads): p for p in missing}
        for future in concurrent.futures.as_completed(futures):
            path, (text, seconds, error) = futures[future], future.result()
            name = os.path.relpath(path, ROOT)
            if error is not None:
                failed.append(name)
                print(f"FAILED {name} after {seconds:.0f} s:\n{error}", file=sys.stderr)
                continue
            record = cache.add_nb_to_project(str(path))
            cache.cache_notebook_bundle(
                CacheBundleIn(nbformat.reads(text, as_version=4), record.uri,
                              data={"execution_seconds": seconds}),
                check_validity=False, overwrite=True)
            print(f"executed {name} in {seconds:.0f} s")
    print(f"{len(missing)} notebooks in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def _cached(cache, path: Path) -> bool:
    try:
        cache.match_cache_notebook(nbformat.read(path, as_version=4))
    except KeyError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
