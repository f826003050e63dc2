"""Layer-by-layer capture of calibration hidden states, streamed to disk and shared by every method.

The capture runs the model one decoder layer at a time over the whole calibration set (the way SliceGPT and
SparseGPT process a model): it keeps one layer's activations for all samples in memory, writes them to a
memory-mapped ``.npy`` file, and moves on. ``h_0`` is the input of layer 0 (the embeddings), ``h_i`` the output of
layer ``i-1``; all are taken **before** the final norm, which is what block similarity and the KDP fit need.

Weights are bounded too: for a base model stored as safetensors or ``.bin`` shards (embedded, hub and path
sources alike), `open_layerwise` builds the model with empty (meta) decoder layers and `capture` materialises
one layer's weights from the shards right before running it and drops them right after, so the capture holds
the embeddings (until the layer inputs exist), then one decoder layer and one layer's activations, never the
whole model.

The cache directory carries a manifest with the key it was built for (model, calibration set, max length, code
version, storage dtype) and a SHA-256 per file; `HiddenStates.open` rejects a cache whose key differs and checks a
file's hash the first time it is read, so a truncated or bit-flipped file is detected instead of used.
"""

from __future__ import annotations

import ctypes
import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from kdp.adapters import LayerInputs, ModelAdapter
from kdp.calibration import CalibrationSet
from kdp.errors import UserError
from kdp.io import atomic_path, read_json, sha256_file, write_json

CAPTURE_VERSION = 1
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


class CorruptCache(UserError):
    """A cache file does not match its manifest; the cache is deleted so that a rerun rebuilds it."""


def state_file(index: int) -> str:
    return f"h_{index:03d}.npy"


class LayerSource(Protocol):
    """Makes decoder layer ``index`` runnable before it is used and may release it afterwards."""

    def materialise(self, index: int) -> None: ...

    def release(self, index: int) -> None: ...

    def embedded(self) -> None:
        """Every layer input is computed: the embeddings are no longer needed."""


class ResidentLayers:
    """Every layer already sits in memory (a fully loaded model): nothing to load or free."""

    def materialise(self, index: int) -> None:
        pass

    def release(self, index: int) -> None:
        pass

    def embedded(self) -> None:
        pass


class StreamedLayers:
    """Decoder layers kept on the meta device and filled from safetensors shards one at a time."""

    def __init__(self, adapter: ModelAdapter, located: dict[str, tuple[str, Path]], layers_prefix: str,
                 device: torch.device, dtype: torch.dtype):
        self.adapter, self.located, self.layers_prefix = adapter, located, layers_prefix
        self.device, self.dtype = device, dtype

    def materialise(self, index: int) -> None:
        wanted = f"{self.layers_prefix}.{index}."
        state = _read_state({n: at for n, at in self.located.items() if n.startswith(wanted)}, self.device, self.dtype)
        self.adapter.layers[index].load_state_dict({n[len(wanted):]: t for n, t in state.items()}, strict=True,
                                                   assign=True)

    def release(self, index: int) -> None:
        self.adapter.layers[index].to("meta")
        _return_freed_memory()

    def embedded(self) -> None:
        for module in self.adapter.model.modules():
            for name, param in module.named_parameters(recurse=False):
                module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS. glibc keeps them for reuse, and with activation batches of a new
    size every layer the resident set would creep up layer by layer (about 20 MiB per 7B layer) although
    nothing leaks; elsewhere than glibc this is a no-op."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def open_layerwise(weights_dir: Path, dtype: torch.dtype, device: torch.device) -> tuple[ModelAdapter, LayerSource]:
    """A model whose decoder layers are empty until `StreamedLayers` fills them; embeddings are loaded.

    Falls back to a full load (`ResidentLayers`) only when ``weights_dir`` holds no checkpoint files at all
    (e.g. a hub id whose weights ``from_pretrained`` fetches itself).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdp.adapters import adapter_for

    shards = checkpoint_index(Path(weights_dir))
    if shards is None:
        model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=dtype, trust_remote_code=True).to(device)
        return adapter_for(model.eval()), ResidentLayers()
    config = AutoConfig.from_pretrained(weights_dir, trust_remote_code=True)
    # Buffers stay real: rotary inverse frequencies are computed at construction and are not in the checkpoint.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=dtype)
    adapter = adapter_for(model.eval())
    layers_prefix = _module_name(model, adapter.layers)
    located = _locate(model, shards)
    # The output head is never run by a capture (states are taken before the final norm): leave it empty.
    skipped = (layers_prefix + ".", _module_name(model, model.get_output_embeddings()) + ".")
    outside = {n: at for n, at in located.items() if not n.startswith(skipped)}
    model.load_state_dict(_read_state(outside, device, dtype), strict=False, assign=True)
    _buffers_to(model, device)
    return adapter, StreamedLayers(adapter, located, layers_prefix, device, dtype)


CHECKPOINTS = (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def checkpoint_index(weights_dir: Path) -> dict[str, Path] | None:
    """checkpoint key -> shard file (safetensors preferred, else ``.bin``), or None when there is neither."""
    for index_name, single_name in CHECKPOINTS:
        index, single = weights_dir / index_name, weights_dir / single_name
        if index.is_file():
            return {k: weights_dir / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        if single.is_file():
            return dict.fromkeys(_shard_keys(single), single)
    return None


def _shard_keys(shard: Path) -> list[str]:
    if shard.suffix == ".bin":
        return list(_load_bin(shard))
    with open(shard, "rb") as handle:
        return [k for k in _header(handle)[1] if k != "__metadata__"]


def _load_bin(shard: Path) -> dict[str, torch.Tensor]:
    # mmap: only the tensors a layer asks for are ever paged in, like a safetensors read.
    return torch.load(shard, map_location="cpu", mmap=True, weights_only=True)


def _header(handle) -> tuple[int, dict]:
    """(offset of the data, header) of an open safetensors file: an 8-byte length, then a JSON header."""
    size = int.from_bytes(handle.read(8), "little")
    return 8 + size, json.loads(handle.read(size))


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def _read_state(wanted: dict[str, tuple[str, Path]], device: torch.device, dtype: torch.dtype) -> dict:
    """model name -> tensor for the wanted entries, read shard by shard.

    Plain reads at the offsets the safetensors header gives, not a memory map: mapped pages of a shard count
    in the process's resident set, so a map would add a layer's checkpoint bytes to the peak; a read holds one
    tensor in the checkpoint dtype at a time.
    """
    state = {}
    for shard in sorted({shard for _, shard in wanted.values()}):
        if shard.suffix == ".bin":
            state.update(_read_bin(shard, wanted, device, dtype))
            continue
        with open(shard, "rb") as handle:
            data_start, header = _header(handle)
            for name, (key, at) in wanted.items():
                if at == shard:
                    state[name] = _converted(_read_tensor(handle, data_start, header[key]), device, dtype)
    return state


def _read_bin(shard: Path, wanted: dict[str, tuple[str, Path]], device: torch.device, dtype: torch.dtype) -> dict:
    stored = _load_bin(shard)
    # clone(): the copy must not keep the mapping (and its paged-in bytes) alive once the shard is closed.
    return {name: _converted(stored[key], device, dtype).clone() for name, (key, at) in wanted.items() if at == shard}


def _converted(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype)


def _read_tensor(handle, data_start: int, entry: dict) -> torch.Tensor:
    if entry["dtype"] not in SAFETENSORS_DTYPES:
        raise UserError(f"{handle.name}: tensor dtype {entry['dtype']} is not supported; allowed: "
                        f"{', '.join(SAFETENSORS_DTYPES)}")
    begin, end = entry["data_offsets"]
    handle.seek(data_start + begin)
    buffer = bytearray(end - begin)
    handle.readinto(buffer)
    flat = torch.frombuffer(buffer, dtype=SAFETENSORS_DTYPES[entry["dtype"]]) if buffer else torch.empty(
        0, dtype=SAFETENSORS_DTYPES[entry["dtype"]])
    return flat.reshape(entry["shape"])


def _module_name(model: torch.nn.Module, target: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _locate(model: torch.nn.Module, shards: dict[str, Path]) -> dict[str, tuple[str, Path]]:
    """model parameter name -> (checkpoint key, shard); base-model checkpoints (no ``model.`` prefix) included."""
    names = set(model.state_dict())
    base = f"{model.base_model_prefix}."
    located = {}
    for key, shard in shards.items():
        name = key if key in names else base + key
        if name in names:
            located[name] = (key, shard)
    if not located:
        raise UserError(f"checkpoint keys (e.g. {next(iter(shards))!r}) do not match the model's parameter names "
                        f"(e.g. {next(iter(names))!r}); allowed: a checkpoint written by save_pretrained")
    return located


def _buffers_to(model: torch.nn.Module, device: torch.device) -> None:
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and not buffer.is_meta:
                module._buffers[name] = buffer.to(device)


@torch.no_grad()
def capture(
    adapter: ModelAdapter,
    calibration: CalibrationSet,
    out_dir: Path,
    key: dict[str, Any],
    store_dtype: str = "float16",
    batch_size: int = 8,
    layers: LayerSource | None = None,
    device: torch.device | None = None,
) -> None:
    """Write h_0..h_L for every calibration sample into ``out_dir`` (atomically, as one directory).

    ``layers`` makes each decoder layer runnable just before it is used (`StreamedLayers` for bounded memory);
    the default assumes a fully loaded model.
    """
    if store_dtype not in STORE_DTYPES:
        raise UserError(f"capture.dtype {store_dtype!r} is not allowed; allowed: {', '.join(STORE_DTYPES)}")
    layers = layers or ResidentLayers()
    device = device or adapter.token_embedding.weight.device
    n, length = calibration.input_ids.shape
    shape = (n, length, adapter.hidden_size)
    with atomic_path(out_dir, directory=True) as tmp:
        batches, current = _embed(adapter, calibration, batch_size, device)
        layers.embedded()
        _store(tmp / state_file(0), current, shape, store_dtype)
        for index in tqdm(range(adapter.num_layers), desc="capture layers", unit="layer"):
            layers.materialise(index)
            _advance(adapter, index, current, batches, device)
            layers.release(index)
            _store(tmp / state_file(index + 1), current, shape, store_dtype)
        np.save(tmp / "mask.npy", calibration.attention_mask.numpy().astype(bool))
        files = [state_file(i) for i in range(adapter.num_layers + 1)] + ["mask.npy"]
        manifest = {
            "key": key,
            "version": CAPTURE_VERSION,
            "shape": list(shape),
            "dtype": store_dtype,
            "num_states": adapter.num_layers + 1,
            "sha256": {name: sha256_file(tmp / name) for name in files},
        }
        write_json(tmp / "manifest.json", manifest)


def _embed(adapter, calibration, batch_size, device):
    batches, hidden = [], []
    for ids, mask in tqdm(list(calibration.batches(batch_size)), desc="capture embeddings", unit="batch"):
        inputs = adapter.layer_inputs(ids.to(device), mask.to(device)).to("cpu")
        batches.append(inputs.layer_kwargs)
        hidden.append(inputs.hidden_states)
    return batches, hidden


def _advance(adapter, index, current, batches, device):
    """Replace each batch's states by the layer's output in place: one layer's activations live at a time."""
    for position, kwargs in enumerate(batches):
        moved = LayerInputs(current[position], kwargs).to(device)
        current[position] = adapter.run_layers(moved.hidden_states, moved.layer_kwargs, index, index + 1).cpu()


def _store(path: Path, chunks: list[torch.Tensor], shape: tuple[int, int, int], store_dtype: str) -> None:
    array = open_memmap(path, mode="w+", dtype=STORE_DTYPES[store_dtype], shape=shape)
    start = 0
    for chunk in chunks:
        array[start : start + chunk.shape[0]] = chunk.float().numpy()
        start += chunk.shape[0]
    array.flush()
    del array


@dataclass
class HiddenStates:
    """Read access to a capture directory; each file's hash is verified on first use."""

    root: Path
    manifest: dict[str, Any]
    _verified: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, root: Path, expected_key: dict[str, Any] | None = None) -> "HiddenStates":
        root = Path(root)
        try:
            manifest = read_json(root / "manifest.json")
        except (OSError, ValueError) as error:
            _discard(root)
            raise CorruptCache(f"{root}: hidden-state cache has no readable manifest ({error}); "
                               "it was deleted, rerun the same command to rebuild it") from error
        if expected_key is not None and manifest.get("key") != expected_key:
            # A stale cache is as unusable as a corrupt one, and leaving it would make every rerun fail the same way.
            _discard(root)
            raise CorruptCache(f"{root}: hidden-state cache was built for {manifest.get('key')}, not for "
                               f"{expected_key}; it was deleted, rerun the same command to rebuild it")
        return cls(root, manifest)

    @property
    def num_states(self) -> int:
        return int(self.manifest["num_states"])

    @property
    def num_layers(self) -> int:
        return self.num_states - 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["shape"])

    @property
    def mask(self) -> np.ndarray:
        return np.load(self._checked("mask.npy"))

    def states(self, index: int) -> np.ndarray:
        """Memory-mapped (n_samples, seq_len, d) array of h_index."""
        if not 0 <= index < self.num_states:
            raise IndexError(f"hidden state {index} outside 0..{self.num_states - 1}")
        return np.load(self._checked(state_file(index)), mmap_mode="r")

    def tokens(self, index: int, samples: slice | np.ndarray = slice(None)) -> torch.Tensor:
        """float32 (n_tokens, d) of the real (unpadded) tokens of the chosen samples."""
        states = np.asarray(self.states(index)[samples], dtype=np.float32)
        return torch.from_numpy(states[self.mask[samples]])

    def _checked(self, name: str) -> Path:
        path = self.root / name
        if name not in self._verified:
            expected = self.manifest["sha256"].get(name)
            if not path.is_file() or sha256_file(path) != expected:
                _discard(self.root)
                raise CorruptCache(f"{path}: hidden-state cache file is missing or does not match its recorded "
                                   "SHA-256 (truncated or corrupted); the cache was deleted, rerun the same "
                                   "command to rebuild it")
            self._verified.add(name)
        return path


def _discard(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
