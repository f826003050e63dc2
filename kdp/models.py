"""How models are materialised from their source (`kdp.sources`) and how every variant is stored.

``results/models/{model}/base/`` holds ``manifest.json`` (what the model is and where its weights live) and, for
embedded models, the weights themselves. Every pruned variant is a ``save_pretrained`` directory that stock
``transformers`` loads; the dense variant is a manifest that points at the base.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from kdp.errors import UserError
from kdp.io import atomic_path, read_json, write_json
from kdp.sources import ModelSource

MANIFEST = "manifest.json"
VARIANT_RECORD = "kdp_variant.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str = "auto") -> torch.device:
    requested = os.environ.get("KDP_DEVICE", requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"runtime.dtype {name!r} is not allowed; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# -- base models ---------------------------------------------------------------------------------------------
def materialize_base(name: str, spec: dict[str, Any], out_dir: Path, seed: int) -> dict:
    """Build ``results/models/{name}/base/``: check the source exists and record what it is."""
    source = ModelSource.parse(spec["source"], f"models.{name}.source")
    with atomic_path(out_dir, directory=True) as tmp:
        if source.kind == "embedded":
            details = _build_embedded(source.ref, tmp, seed)
            weights = "."
        else:
            details = {"revision": spec.get("revision")}
            weights = _checked_external_location(name, source, spec.get("revision"))
        config = _read_config(tmp if source.kind == "embedded" else weights, name, source, spec.get("revision"))
        _check_supported(name, config.model_type)
        manifest = {
            "name": name,
            "source": str(source),
            "weights": weights,
            "tokenizer": spec.get("tokenizer", weights),
            "model_type": config.model_type,
            "num_hidden_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "details": details,
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _build_embedded(name: str, out_dir: Path, seed: int) -> dict:
    if name == "smollm2-135m":
        from kdp.embedded import smollm2

        return smollm2.materialize(out_dir)
    if name == "opt-kjv":
        import logging

        from kdp.embedded import shipped

        return shipped.materialize_opt_kjv(out_dir, seed=seed, log=logging.getLogger("kdp"))
    from kdp.embedded import micro

    return micro.materialize(name, out_dir, seed=seed)


def _checked_external_location(name: str, source: ModelSource, revision: str | None) -> str:
    if source.kind == "path":
        path = Path(source.ref).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise UserError(
                f"models.{name}.source: {source.ref!r} is not a model directory (no config.json there); "
                "allowed: a directory written by save_pretrained"
            )
        return str(path)
    return source.ref


def _read_config(location: str | Path, name: str, source: ModelSource, revision: str | None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(location), revision=revision, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise UserError(
            f"models.{name}.source: cannot read a model config from {str(source)!r} "
            f"({str(error).splitlines()[0]}); allowed: a hub id reachable or in the local Hugging Face cache, "
            "or a local save_pretrained directory"
        ) from error


def _check_supported(name: str, model_type: str) -> None:
    from kdp.adapters import supported_model_types

    if model_type not in supported_model_types():
        raise UserError(f"models.{name}.source: model_type {model_type!r} has no adapter; supported model types: "
                        f"{', '.join(supported_model_types())}")


# -- loading ---------------------------------------------------------------------------------------------------
def load_base(base_dir: Path, dtype: str = "float32", device: str = "auto"):
    """(model, tokenizer) of a base model directory written by `materialize_base`."""
    manifest = read_json(Path(base_dir) / MANIFEST)
    weights = _location(base_dir, manifest["weights"])
    tokenizer_at = _location(base_dir, manifest["tokenizer"])
    return _load(weights, tokenizer_at, dtype, device, where=f"models.{manifest['name']}")


def load_variant(variant_dir: Path, dtype: str = "float32", device: str = "auto"):
    """(model, tokenizer) of any variant directory, dense (a manifest pointing at the base) or pruned."""
    variant_dir = Path(variant_dir)
    if (variant_dir / MANIFEST).is_file():
        return load_base(_location(variant_dir, read_json(variant_dir / MANIFEST)["base"]), dtype, device)
    return _load(str(variant_dir), str(variant_dir), dtype, device, where=str(variant_dir))


def weights_directory(base_dir: Path) -> Path:
    """The local directory holding a base model's config and weight files (a hub id resolves to its snapshot)."""
    manifest = read_json(Path(base_dir) / MANIFEST)
    location = _location(base_dir, manifest["weights"])
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import snapshot_download

    # Only what a layer-by-layer load reads: configs, custom code and one weight format (safetensors if the repo
    # has them; the OPT repos only have .bin), never both.
    revision = manifest["details"].get("revision")
    snapshot = Path(snapshot_download(location, revision=revision, allow_patterns=["*.json", "*.py", "*.safetensors"]))
    if any(snapshot.glob("*.safetensors")):
        return snapshot
    return Path(snapshot_download(location, revision=revision, allow_patterns=["*.json", "*.py", "*.bin"]))


def _location(anchor: Path, ref: str) -> str:
    candidate = Path(anchor) / ref
    return str(candidate.resolve()) if candidate.exists() else ref


def _load(weights: str, tokenizer_at: str, dtype: str, device: str, where: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        weights, dtype=resolve_dtype(dtype, target), trust_remote_code=True
    ).to(target)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_at, trust_remote_code=True)
    check_tokenizer_matches(model, tokenizer, where)
    return model, tokenizer


def check_tokenizer_matches(model, tokenizer, where: str) -> None:
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(
            f"{where}: tokenizer has {len(tokenizer)} tokens but the model's embedding has only {vocab} rows; "
            "allowed: the tokenizer the model was trained with"
        )


# -- saving variants -------------------------------------------------------------------------------------------
def save_dense_pointer(base_dir: Path, out_dir: Path, record: dict) -> None:
    with atomic_path(out_dir, directory=True) as tmp:
        write_json(tmp / MANIFEST, {"base": os.path.relpath(Path(base_dir).resolve(), Path(out_dir).resolve())})
        write_json(tmp / VARIANT_RECORD, record)


def save_variant(model, tokenizer, out_dir: Path, record: dict) -> None:
    """Save a pruned model so stock ``AutoModelForCausalLM.from_pretrained`` loads it; the record goes last."""
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for helper in getattr(model, "_kdp_custom_code_files", ()):
            shutil.copy(helper, tmp / Path(helper).name)
        write_json(tmp / VARIANT_RECORD, record)


def variant_record(variant_dir: Path) -> dict:
    return read_json(Path(variant_dir) / VARIANT_RECORD)


def base_manifest(base_dir: Path) -> dict:
    return json.loads((Path(base_dir) / MANIFEST).read_text())
