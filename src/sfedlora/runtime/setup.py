"""The one set-up every entry point uses: the config checked against the methods, the data drawn and split
over clients, the base model loaded at the precision the device supports with the adapters injected, and
each held client's examples encoded; with what set-up found recorded for the run description (Resolved).

The in-process runner holds every client; a Flower node holds its own partition, drawn as the in-process
runner draws all of them and kept in a cache (a deployment builds a node per message: the draw costs
seconds, the read milliseconds). `bench` and `export` use the model part alone (load_base).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sfedlora.adapters.inject import inject_adapters, lora_layers
from sfedlora.config import RunConfig, to_dict
from sfedlora.data.encode import Encoded, encode
from sfedlora.data.files import CHARS_PER_TOKEN
from sfedlora.data.partition import ClientData, describe, make_clients
from sfedlora.data.sources import load_task
from sfedlora.errors import SfedloraError
from sfedlora.methods import FederatedMethod
from sfedlora.runtime.models import RANDOM, load_model, model_path, revision
from sfedlora.runtime.quantize import quantize
from sfedlora.runtime.resolve import Resolved, check, resolve, resolve_device, resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Setup:
    """What a process needs to run clients: the method, its clients' data and encoded examples, the model."""

    cfg: RunConfig
    method: FederatedMethod
    task: str
    label_names: list[str]
    clients: dict[int, ClientData]  # the clients this process holds, by index
    descriptions: dict[int, dict[str, Any]]  # per held client: sizes and its label / category histogram
    model: Any
    tok: Any
    targets: list[str]
    device: torch.device
    precision: str
    encoded: dict[int, Encoded] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # what reading the data did (data.sources.TaskData)
    resolved: Resolved | None = None  # the run description, where every client is held (an in-process run)
    attention: dict[str, Any] = field(default_factory=dict)  # model.attention resolved (client.probe.set_attention)

    def found(self) -> dict[str, Any]:
        """What set-up found, for the run description (Resolved)."""
        path = model_path(self.cfg.model.name) if self.cfg.model.name not in RANDOM else ""
        return {"task": self.task, "label_names": self.label_names, "targets": self.targets,
                "model": self.cfg.model.name, "model_path": path, "revision": revision(self.cfg.model.name, self.model),
                "device": str(self.device), "precision": self.precision, "data_counts": self.counts,
                "attention": self.attention}

    def describe(self, resolved: Resolved) -> Resolved:
        """The run description of an in-process run (every client held): the method's resolution with what
        set-up found, the split sizes and the data's fingerprint."""
        sizes = [{k: self.descriptions[c][k] for k in ("train", "val", "test")} for c in sorted(self.clients)]
        return replace(resolved, **self.found(), sizes=sizes, data_fingerprint=fingerprint(self.clients))


def fingerprint(clients: dict[int, ClientData]) -> str:
    """A hash of every held client's examples, split by split: a resume checks its data is the run's."""
    h = hashlib.sha256()
    for c in sorted(clients):
        for split in ("train", "val", "test"):
            h.update(json.dumps(getattr(clients[c], split), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def data_fingerprint(cfg: RunConfig) -> str:
    """The fingerprint (`resolved.data_fingerprint`) a run of this config would record for its clients' data
    now: the data read and partitioned as set-up does it, without the model. A finished run whose recorded one
    differs was made on other data (a changed data file, say)."""
    return fingerprint(load_clients(cfg)[2])


def _histogram_key(task: str, records: list[dict[str, Any]], cfg: RunConfig) -> str:
    if task == "classification":
        return "label"
    return cfg.data.partition_by if cfg.data.partition_by in records[0] else cfg.data.category_field


def data_ident(cfg: RunConfig) -> str:
    """What the clients' data depend on: the data settings, the seed, the number of clients, and the longest text
    kept as read (model.max_length). Runs with equal idents get the same clients' data."""
    return json.dumps({"data": to_dict(cfg)["data"], "seed": cfg.seed, "clients": cfg.fed.clients,
                       "max_length": cfg.model.max_length}, sort_keys=True)


def load_clients(cfg: RunConfig, partitions: list[int] | None = None,
                 cache: Path | None = None) -> tuple[str, list[str], dict[int, ClientData], dict[int, dict[str, Any]],
                                                     dict[str, int]]:
    """(task, label names, clients, descriptions, counts) for the given client indices (all by default). With
    a cache folder, each client's share is kept there after the first draw and read back afterwards."""
    wanted = list(range(cfg.fed.clients)) if partitions is None else list(partitions)
    digest = hashlib.sha1(data_ident(cfg).encode()).hexdigest()[:16]
    paths = {c: None if cache is None else cache / f"partition-{digest}-{c}.json" for c in wanted}
    if all(p is not None and p.exists() for p in paths.values()):
        saved = {c: json.loads(p.read_text()) for c, p in paths.items() if p is not None}
        first = saved[wanted[0]]
        return (first["task"], first["label_names"],
                {c: ClientData(s["train"], s["val"], s["test"]) for c, s in saved.items()},
                {c: s["description"] for c, s in saved.items()}, first.get("counts", {}))
    data = load_task(cfg.data, cfg.seed, cfg.model.max_length * CHARS_PER_TOKEN)
    every = make_clients(data.records, cfg.fed.clients, cfg.data, cfg.seed)
    key = _histogram_key(data.task, data.records, cfg)
    clients = {c: every[c] for c in wanted}
    descriptions = {c: describe([every[c]], key, data.label_names or None)[0] | {"client": c} for c in wanted}
    for c, path in paths.items():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"task": data.task, "label_names": data.label_names, "train": clients[c].train,
                                       "val": clients[c].val, "test": clients[c].test,
                                       "description": descriptions[c], "counts": data.counts}))
            os.replace(tmp, path)
    return data.task, data.label_names, clients, descriptions, data.counts


def load_base(cfg: RunConfig, task: str, n_labels: int, device: torch.device, precision: str,
              head: bool | None = None) -> tuple[Any, Any, list[str]]:
    """The frozen base model at `precision` with stacked adapters (and, for classification unless `head` is
    False, a trainable head) on the configured targets, on `device`: (model, tokenizer, adapted modules)."""
    model, tok = load_model(cfg.model.name, task, max(2, n_labels), DTYPES[precision])
    quantize(model, cfg.model.quantization, DTYPES[precision])  # QLoRA: the body's linear layers (model.quantization)
    head = task == "classification" if head is None else head
    targets = inject_adapters(model, cfg.lora.targets, cfg.lora.dropout, head=head)
    model.to(device)
    if cfg.train.compile:  # compiled on first use, recompiled for new shapes (dynamic after the first)
        model.compile()
    return model, tok, targets


def check_rank(cfg: RunConfig, model: Any) -> None:
    """No client rank above min(d_in, d_out) of an adapted module: B A has at most that many directions, so a
    larger rank only adds parameters and compute (lora.rank=100000 on 32-wide layers: 115 s and 1.7 GB)."""
    top = max(cfg.lora.ranks or cfg.lora.rank_set or [cfg.lora.rank])
    name, layer = min(lora_layers(model).items(), key=lambda kv: min(kv[1].in_features, kv[1].out_features))
    width = min(layer.in_features, layer.out_features)
    if top > width:
        raise SfedloraError(f"LoRA rank {top} exceeds what the adapted modules can use: {name} is {layer.out_features}"
                            f" x {layer.in_features}, so B A has at most {width} directions and a larger rank only "
                            f"adds parameters and compute; use a rank of at most {width} (lora.rank, lora.ranks, "
                            "lora.rank_set)")


def setup(cfg: RunConfig, partitions: list[int] | None = None, cache: Path | None = None) -> Setup:
    """Everything before the first round. Anything that can fail on user input fails here, before a run
    folder exists."""
    method = check(cfg)
    torch.manual_seed(cfg.seed)  # the task head's initialisation, the same in every process
    task, labels, clients, descriptions, counts = load_clients(cfg, partitions, cache)
    device = resolve_device(cfg.model.device)
    precision = resolve_precision(cfg.model.precision, device)
    resolved = None  # every client held: resolved once, here (the rank assignment is checked before the model loads)
    if len(clients) == cfg.fed.clients:
        resolved = resolve(cfg, method, [clients[c].n_train for c in sorted(clients)])
    model, tok, targets = load_base(cfg, task, len(labels), device, precision)
    check_rank(cfg, model)
    s = Setup(cfg=cfg, method=method, task=task, label_names=labels, clients=clients, descriptions=descriptions,
              model=model, tok=tok, targets=targets, device=device, precision=precision, counts=counts)
    s.encoded = encode(clients, task, tok, cfg)
    examples = [ex for e in s.encoded.values() for split in (e.train, e.val, e.test) for ex in split]
    s.counts = {**counts, "encoded": len(examples), "cut_to_max_length": sum(bool(ex.get("truncated"))
                                                                              for ex in examples)}
    s.resolved = None if resolved is None else s.describe(resolved)
    return s
