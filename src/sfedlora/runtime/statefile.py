"""State on disk and on the wire without pickle: nothing sfedlora loads can run code.

A state is any nesting of dicts (str keys), lists, tuples, tensors and JSON values (a run's checkpoint, a
client's adapters and optimizer state, a node's saved state). Its tensors go into a safetensors file, the
rest into a JSON skeleton in that file's metadata, next to a SHA-256 over skeleton and tensor bytes that
load() verifies: a flipped bit or a truncated file is refused (StateError), never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from sfedlora.errors import SfedloraError

FORMAT = "sfedlora-state-1"


class StateError(SfedloraError):
    """A state file or message that is not one sfedlora wrote, or was damaged."""


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        # a compact copy: safetensors refuses views and tensors that share memory (a head several clients
        # received from one update, FlexLoRA's transposed factors)
        tensors[key] = obj.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("state dicts need string keys")
        return {"__dict__": {k: _flatten(v, tensors) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a state file")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"].items()}
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def _digest(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(skeleton.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dumps(obj: Any) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_flatten(obj, tensors), allow_nan=True)
    meta = {"format": FORMAT, "skeleton": skeleton, "sha256": _digest(skeleton, tensors)}
    return st_save(tensors, metadata=meta)


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise StateError("truncated (no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise StateError("truncated header")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        raise StateError("unreadable header") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateError("not a sfedlora state")
    return meta


def loads(data: bytes) -> Any:
    meta = _metadata(data)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own types on damaged buffers
        raise StateError(f"damaged tensor data ({type(exc).__name__})") from None
    if _digest(meta["skeleton"], tensors) != meta.get("sha256"):
        raise StateError("checksum mismatch: the content was changed or damaged")
    return _unflatten(json.loads(meta["skeleton"]), tensors)


def write(path: Path, data: bytes) -> None:
    """Write a state's bytes (dumps) atomically: a temporary file, fsync, rename; a kill at any moment leaves
    the old file or the new one. The folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(path: Path, obj: Any) -> None:
    """dumps, then write atomically."""
    write(path, dumps(obj))


def load(path: Path) -> Any:
    path = Path(path)
    try:
        return loads(path.read_bytes())
    except StateError as exc:
        raise StateError(f"{path} cannot be used: {exc}") from None


RUN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a Flower run's key becomes a folder name: nothing else


def file_name(c: int) -> str:
    return f"client-{c}.safetensors"


def node_file(node_dir: Path, run_key: str, c: int) -> Path:
    """Where a Flower node keeps client c's state for the run `run_key`: <node-dir>/<run-key>/client-<c>.safetensors
    (the node writes it, export reads it). The key comes over the network: a plain identifier or nothing."""
    if not RUN_KEY.fullmatch(run_key):
        raise SfedloraError(f"run key {run_key[:80]!r} is not a plain identifier; refusing to build a path from it")
    return Path(node_dir) / run_key / file_name(c)
