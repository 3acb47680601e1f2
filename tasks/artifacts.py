"""Content-addressed artifact directories: build an expensive product once, reuse it everywhere.

Prepared data, bootstrapped models, teacher rollouts and teacher score caches are stored under
``<root>/<kind>/<key>/`` where the key hashes everything that determines the product: its
inputs, its config and the source code that builds it (``code_version``). Prefect's default
cache key ignores the code a task calls, so keys made here always include it.

A product is built in a temporary sibling directory and renamed into place only when complete,
so a crash never leaves a half-built artifact that a later run would trust.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

ROOT_ENV = "DISTILL_LAB_ARTIFACTS"
COMPLETE_MARKER = ".complete"


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
    """Digest of the source of the given modules: changes whenever the building code changes."""
    digest = hashlib.sha256()
    for name in sorted(module_names):
        digest.update(name.encode())
        digest.update(inspect.getsource(importlib.import_module(name)).encode())
    return digest.hexdigest()[:16]


def cached_build(
    kind: str,
    key: str,
    build: Callable[[Path], None],
    *,
    root: str | Path | None = None,
    describe: dict[str, Any] | None = None,
) -> tuple[Path, bool]:
    """Return (directory, reused): the artifact ``kind/key``, building it first if absent.

    build(tmp_dir) writes the product into tmp_dir; it is renamed into place only on success.
    ``describe`` (config, inputs) is saved as key.json beside the product for humans.
    """
    final = artifact_root(root) / kind / key
    if (final / COMPLETE_MARKER).exists():
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "key.json").write_text(json.dumps(_canonical(describe or {}), indent=2))
        (tmp / COMPLETE_MARKER).write_text(key)
        if final.exists() and not (final / COMPLETE_MARKER).exists():
            shutil.rmtree(final)  # an incomplete leftover from a crashed build
        os.replace(tmp, final)
    except OSError:
        if (final / COMPLETE_MARKER).exists():  # a concurrent run finished the same build
            shutil.rmtree(tmp, ignore_errors=True)
            return final, True
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False
