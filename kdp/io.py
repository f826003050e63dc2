"""Atomic file output and content hashing.

Every file a rule writes goes through here: it is written to a temporary name in the same folder and renamed
into place only when complete, so a killed job never leaves something a rerun would mistake for a finished output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on failure it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    _remove_leftovers(target.parent, prefix)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create owner-only entries; give the result the permissions a plain open() would.
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    try:
        yield tmp
        _pause_for_fault_tests()
        if directory:
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        else:
            _fsync(tmp)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Delete temporaries of the same target left by a killed job (a killed model save can hold gigabytes).

    Only the job that writes a target writes its temporaries, and Snakemake runs one job per output at a time.
    """
    for leftover in folder.glob(prefix + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _pause_for_fault_tests() -> None:
    """With ``KDP_PAUSE_BEFORE_RENAME=<seconds>``, hold every complete temporary before its rename.

    The reliability tests use it to kill a job at the one moment a non-atomic writer would leave a finished-looking
    file behind; it is never set in normal runs.
    """
    seconds = os.environ.get("KDP_PAUSE_BEFORE_RENAME")
    if seconds:
        time.sleep(float(seconds))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    """Hash of a JSON-able value that does not depend on key order."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- folders that carry their own key and content hashes ----------------------------------------------------------
FOLDER_MANIFEST = "manifest.json"


def write_folder_manifest(folder: str | os.PathLike, key: dict[str, Any]) -> None:
    """Record ``key`` (what the folder was built for) and the SHA-256 of every file in it; call it last."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != FOLDER_MANIFEST)
    write_json(folder / FOLDER_MANIFEST, {"key": key, "sha256": {name: sha256_file(folder / name) for name in files}})


def verify_folder_manifest(folder: str | os.PathLike, expected_key: dict[str, Any], what: str,
                           unchecked: tuple[str, ...] = ()) -> None:
    """Raise `CorruptOutput` (after deleting ``folder``, so a rerun rebuilds it) unless every recorded file is
    present with its recorded hash and the folder was built for ``expected_key`` (ignoring the ``unchecked`` keys,
    which the caller cannot know)."""
    from kdp.errors import CorruptOutput

    folder = Path(folder)
    try:
        manifest = read_json(folder / FOLDER_MANIFEST)
        recorded = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        problem = f"has no readable {FOLDER_MANIFEST}"
    else:
        bad = [name for name, digest in sorted(recorded.items())
               if not (folder / name).is_file() or sha256_file(folder / name) != digest]
        if bad:
            problem = f"file {bad[0]} is missing or does not match its recorded SHA-256 (truncated or corrupted)"
        else:
            recorded_key = manifest.get("key") or {}
            changed = sorted(k for k in {*expected_key, *recorded_key}
                             if k not in unchecked and expected_key.get(k) != recorded_key.get(k))
            if not changed:
                return
            problem = f"was built for another configuration (differs in {', '.join(changed)})"
    shutil.rmtree(folder, ignore_errors=True)
    raise CorruptOutput(f"{folder}: {what} {problem}; it was deleted, rerun the same command to rebuild it")
