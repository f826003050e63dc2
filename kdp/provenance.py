"""What every result file records about how it was made: config hash, seed, package versions, git commit.

Nothing here depends on the clock, so two runs of the same config on the same checkout write identical files.
"""

from __future__ import annotations

import json
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from kdp.io import sha256_json

PACKAGES = ("kdp-bench", "torch", "transformers", "lm_eval", "snakemake", "numpy", "tokenizers", "accelerate", "peft")
_REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@lru_cache(maxsize=None)
def git_commit() -> str:
    """HEAD of the checkout the code runs from, with ``+dirty`` when tracked files differ from it."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(_REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def config_hash(config: dict[str, Any]) -> str:
    return sha256_json(config)[:16]


def provenance(config: dict[str, Any] | None = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"git_commit": git_commit(), "packages": package_versions()}
    if config is not None:
        record["config_hash"] = config_hash(config)
    if seed is not None:
        record["seed"] = seed
    record.update(extra)
    return record


def provenance_header(config: dict[str, Any], marker: str = "#", **extra: Any) -> str:
    """The provenance lines that open every text result: ``<marker> key: <JSON value>``, one per entry, ``#`` for
    CSV and Markdown-embedded records, ``%`` for LaTeX; the config's seed is recorded."""
    record = provenance(config, config["seed"], **extra)
    return "".join(f"{marker} {key}: {json.dumps(value, sort_keys=True)}\n" for key, value in record.items())
