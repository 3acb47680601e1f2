"""Content-addressed artifact directories: build an expensive product once, reuse it everywhere.

Prepared data, bootstrapped models, teacher rollouts and teacher score caches are stored under
``<root>/<kind>/<key>/`` where the key hashes everything that determines the product: its
inputs, its config and the source code that builds it (``code_version``). Prefect's default
cache key ignores the code a task calls, so keys made here always include it.

A product is built in a temporary sibling directory and renamed into place only when complete,
so a crash never leaves a half-built artifact that a later run would trust; its files carry
SHA-256 checksums verified on use (a corrupt product is rebuilt, saying which file failed), and
a file lock makes two runs that need the same product share one build instead of repeating it.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import fnmatch
import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from tasks.files import atomic_write_text

ROOT_ENV = "DISTILL_LAB_ARTIFACTS"
COMPLETE_MARKER = ".complete"
CHECKSUMS = "checksums.json"


def artifact_root(root: str | Path | None = None) -> Path:
    """The artifact directory: the argument, else $DISTILL_LAB_ARTIFACTS, else ./artifacts."""
    return Path(root or os.environ.get(ROOT_ENV) or "artifacts").resolve()


def _canonical(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _canonical(asdict(value))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):  # pydantic models
        return _canonical(value.model_dump())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot hash a {type(value).__name__} into an artifact key: {value!r}")


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable hex digest of JSON-able parts (dataclasses, dicts, lists, scalars)."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: str | Path, length: int = 16) -> str:
    """Digest of a file's bytes (or of every file under a directory, by relative path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def code_version(module_names: Iterable[str]) -> str:
    """Digest of the code of the given modules: changes whenever the building code changes, and
    not when only its comments, docstrings or layout do (a docstring edit keeps the caches)."""
    digest = hashlib.sha256()
    for name in sorted(module_names):
        digest.update(name.encode())
        digest.update(_code_only(inspect.getsource(importlib.import_module(name))).encode())
    return digest.hexdigest()[:16]


def _code_only(source: str) -> str:
    """The module's syntax tree without docstrings, as text (comments never reach the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path, self_verified: tuple[str, ...] = ()) -> str:
    """Record the SHA-256 of every file under directory in checksums.json (files matching a
    self_verified glob are left to their own manifest); returns that file's SHA-256."""
    files = {str(p.relative_to(directory)): sha256_file(p)
             for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name not in _UNLISTED and not _matches(p, self_verified)}
    path = directory / CHECKSUMS
    atomic_write_text(path, json.dumps({"files": files, "self_verified": list(self_verified)},
                                       indent=1, sort_keys=True))
    return sha256_file(path)


def verify_checksums(directory: Path) -> str | None:
    """None if every file of directory matches its checksums.json, else what is wrong — one
    line naming the file."""
    listing = directory / CHECKSUMS
    if not listing.is_file():
        return f"{listing} is missing"
    try:
        record = json.loads(listing.read_text())
        files, self_verified = dict(record["files"]), tuple(record["self_verified"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        return f"{listing} is unreadable ({type(error).__name__}: {error})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != expected:
            return f"{path} does not match its checksum (changed or corrupt)"
    for path in directory.rglob("*"):
        if (path.is_file() and path.name not in _UNLISTED and not _matches(path, self_verified)
                and str(path.relative_to(directory)) not in files):
            return f"{path} is not listed in {listing} (a file was added)"
    return None


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def build_lock(path: Path, on_wait: Callable[[], None] | None = None):
    """An exclusive lock on path (created if missing), held for the block: two processes
    building or setting up the same thing take turns instead of racing or repeating work. The
    kernel drops the lock when its holder dies, so a killed run never blocks the next.
    on_wait is called once if another process holds it (so a wait is never silent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            _wait_for_lock(handle)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for_lock(handle, poll_s: float = 0.2) -> None:
    """Take the lock once its holder lets go, trying every poll_s rather than blocking in
    flock: a blocked flock runs no Python, so a SIGTERM the kernel hands to another thread (a
    Prefect one) was not acted on until the other builder finished (seen once in CI)."""
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(poll_s)


def package_modules(package: str) -> list[str]:
    """Every module of a package (for code_version: a package's __init__ alone says little)."""
    module = importlib.import_module(package)
    return [package, *sorted(f"{package}.{info.name}"
                             for info in pkgutil.iter_modules(module.__path__))]


def cached_build(
    kind: str,
    key: str,
    build: Callable[[Path], None],
    *,
    root: str | Path | None = None,
    describe: dict[str, Any] | None = None,
    self_verified: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> tuple[Path, bool]:
    """Return (directory, reused): the artifact ``kind/key``, building it first if absent.

    build(tmp_dir) writes the product into tmp_dir; it is checksummed and renamed into place
    only on success. ``describe`` (config, inputs) is saved as key.json beside the product for
    humans. On reuse every file is checked against its checksum; a corrupt product is named
    through log, removed and rebuilt. Files matching a ``self_verified`` glob are checked by the
    product's own manifest instead (the score cache rescores one bad shard, not all). One build
    of a key runs at a time across processes; the others wait and reuse it.
    """
    final = artifact_root(root) / kind / key
    def waiting() -> None:
        log(f"waiting for another process that is building {kind} {key} (the lock "
            f"{final.parent / f'.{key}.lock'}); it is reused when done")

    with build_lock(final.parent / f".{key}.lock", on_wait=waiting):
        _remove_half_built(final)
        if (final / COMPLETE_MARKER).exists():
            problem = _verified(final)
            if problem is None:
                return final, True
            log(f"warning: cached {kind} {final} is corrupt ({problem}); rebuilding it")
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            build(tmp)
            atomic_write_text(tmp / "key.json", json.dumps(_canonical(describe or {}), indent=2))
            write_checksums(tmp, self_verified)
            atomic_write_text(tmp / COMPLETE_MARKER, key)
            if final.exists():
                shutil.rmtree(final)  # an incomplete leftover from a crashed build
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _VERIFIED.add(_stamp(final))
    return final, False


# Products this process has verified, by their files' sizes and modification times: hashing a
# large model's files again on every use would cost seconds; any rewrite changes the stamp.
_VERIFIED: set[tuple] = set()
_UNLISTED = {CHECKSUMS, COMPLETE_MARKER}


def _stamp(directory: Path) -> tuple:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return (str(directory), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def _verified(final: Path) -> str | None:
    """None if the product passes its checksums (products of older versions without a listing
    are listed now, trusted on first use)."""
    if not (final / CHECKSUMS).exists():
        write_checksums(final)
    if _stamp(final) in _VERIFIED:
        return None
    problem = verify_checksums(final)
    if problem is None:
        _VERIFIED.add(_stamp(final))
    return problem


def _remove_half_built(final: Path) -> None:
    """Temporary folders of this key left by a killed build (the lock says none is running)."""
    for leftover in final.parent.glob(f".{final.name}-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
