"""Export one client's model from a finished run: a PEFT adapter folder that
`peft.PeftModel.from_pretrained` loads, and a merged model (`save_pretrained`) with no added latency.

PEFT has a single scaling per adapter: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora. sfedlora's
gamma is expressed in those terms exactly: for sfed, use_rslora=True and lora_alpha = alpha*sqrt(N)
(so lora_alpha/sqrt(r) = alpha*sqrt(N/r)); for rslora, use_rslora=True and lora_alpha = alpha; for every
other rule lora_alpha = gamma * r. For the FedSA family a client's model is its own B with the shared A.
Beside each folder, sfedlora.json records the run, the client, its rank and gamma, and (instruction and
math tasks) the prompt format the model was trained with (data.template).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sfedlora.adapters import peft as peft_bridge
from sfedlora.adapters.inject import _is_head
from sfedlora.core.adaptive import module_gammas
from sfedlora.core.scaling import scalar
from sfedlora.data import prompts
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir, statefile
from sfedlora.runtime.models import canonical_id, load_model
from sfedlora.runtime.statefile import file_name, node_file
from sfedlora.tools import model_card


def peft_alpha(rule: str, gamma: float, rank: int, alpha: float, n: float) -> tuple[float, bool]:
    """(lora_alpha, use_rslora) for PEFT such that PEFT's scaling equals gamma."""
    if rule == "sfed":
        return alpha * math.sqrt(n), True
    if rule == "rslora":
        return alpha, True
    return gamma * rank, False


def final_gamma(cfg: Any, resolved: Any, run_dir: Path, client: int,
                upto: int | None = None) -> float | dict[str, float]:
    """The gamma client `client`'s model after round `upto` (default: the last) runs with: the resolved one,
    or with adaptive scaling one per module from the N_eff the run had measured by then."""
    if resolved.scaling != "adaptive":
        return float(resolved.gammas[client])
    measured = [r["adaptive"]["n_eff"] for r in rundir.records(run_dir)
                if (r.get("adaptive") or {}).get("n_eff") and (upto is None or r["round"] <= upto)]
    if not measured:
        return float(resolved.gammas[client])
    return module_gammas(cfg.lora.alpha, resolved.ranks[client], measured[-1])


def _flower_adapters(run_dir: Path, resolved: Any, client: int, node_dir: Path | None) -> dict[str, Any]:
    """A Flower run's client adapters, from the node that trained it: the server never held them."""
    key = resolved.extra.get("run_key", "")
    if node_dir is None:
        raise SfedloraError(f"{run_dir} is a Flower run: the server never held its clients' adapters (for the FedSA "
                            f"family B never leaves a node). Each node keeps its client's final adapters in "
                            f"<node-dir>/{key}/client-<i>.safetensors: give that node's directory with --node-dir")
    path = node_file(Path(node_dir), key, client)
    if not path.exists():
        raise SfedloraError(f"{path} does not exist: client {client} of this run was not trained on the node whose "
                            f"directory is {node_dir}")
    saved = statefile.load(path)
    if "opt" in saved:  # a working state: the node never got the run's last message
        raise SfedloraError(f"{path} is client {client}'s working state at round {saved.get('round')}: its node "
                            "did not take part in the run's end, so its final adapters are not known")
    states: list[Any] = [None] * len(resolved.ranks)
    states[client] = saved["adapters"]
    return {"states": states, "ranks": resolved.ranks, "gammas": resolved.gammas, "merged": saved.get("merged", {}),
            "targets": resolved.targets}


def client_adapters(run_dir: Path, saved: dict[str, Any], client: int, cfg: Any, resolved: Any) -> dict[str, Any]:
    """Client `client`'s adapters from a loaded adapters file (rundir.load_adapters): as saved (memory client
    store); or (disk store) its own file's, or for a client that never trained its seeded fresh ones drawn
    again, with the run's latest update downloaded into them, as the runner does when a client is next used."""
    from sfedlora.client.local import fresh_state
    from sfedlora.client.step import current
    from sfedlora.methods import get_method
    from sfedlora.runtime.setup import load_base

    if "clients" not in saved:
        return saved["states"][client]
    if client in saved["clients"]:
        raw = statefile.load(Path(run_dir) / saved["clients_folder"] / file_name(client))["adapters"]
    else:  # never trained: its fresh adapters, drawn from its seed on the run's model
        model, _, _ = load_base(replace(cfg, train=replace(cfg.train, compile=False)), resolved.task,
                                len(resolved.label_names), torch.device("cpu"), "fp32")
        raw = fresh_state(model, cfg, resolved.init, client, resolved.ranks[client], max(resolved.ranks))
    return current(get_method(cfg.fed.method), raw, saved["latest"], resolved.gammas[client])


def build_peft_model(run_dir: Path, client: int, node_dir: Path | None = None, best: bool = False,
                     rnd: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """A PEFT model for `client` holding exactly its adapters (and head), plus the tokenizer: its final ones,
    with `best` those of the best-on-validation round, with `rnd` those kept after that round
    (keep_round_adapters). A Flower run's adapters are read from the node directory that holds them
    (`node_dir`)."""
    from peft import LoraConfig, get_peft_model

    cfg, resolved = rundir.read(run_dir)
    if not rundir.finished(run_dir):
        raise SfedloraError(f"{run_dir} has no summary.json: the run did not finish"
                            + (" (resume it with sfedlora run --resume)" if resolved.engine == "simulation" else ""))
    n_clients = len(resolved.ranks)
    if not 0 <= client < n_clients:
        raise SfedloraError(f"--client must be in 0..{n_clients - 1}, got {client}")
    if best and rnd is not None:
        raise SfedloraError("give --best or --round N, not both")
    if (best or rnd is not None) and resolved.engine != "simulation":
        raise SfedloraError(f"{run_dir} is a Flower run: its nodes keep only their final adapters, not the "
                            + ("best round's" if best else f"adapters of round {rnd}"))
    saved = rundir.load_adapters(run_dir, best, rnd) if resolved.engine == "simulation" else \
        _flower_adapters(run_dir, resolved, client, node_dir)
    state, rank = client_adapters(run_dir, saved, client, cfg, resolved), saved["ranks"][client]
    rnd = saved.get("round") if best or rnd is not None else None
    gamma = final_gamma(cfg, resolved, run_dir, client, rnd)
    task = resolved.task
    model, tok = load_model(cfg.model.name, task, max(2, len(resolved.label_names)), torch.float32)
    named = dict(model.named_modules())
    with torch.no_grad():
        for m, delta in saved.get("merged", {}).items():  # FLoRA's merged updates are part of W0
            named[m].weight.add_(delta)
    alpha_pattern: dict[str, float] = {}
    if isinstance(gamma, dict):  # adaptive: one gamma per module, PEFT's alpha_pattern (scaling = alpha / r)
        lora_alpha, use_rslora = scalar(gamma) * rank, False
        alpha_pattern = {re.escape(m): g * rank for m, g in gamma.items()}
    else:
        lora_alpha, use_rslora = peft_alpha(resolved.scaling, gamma, rank, cfg.lora.alpha, resolved.n_scaling[client])
    heads = [n for n, mod in named.items() if isinstance(mod, torch.nn.Linear) and _is_head(n)] \
        if task == "classification" else []
    if task == "classification":  # the label names travel with the model
        model.config.id2label = dict(enumerate(resolved.label_names))
        model.config.label2id = {n: i for i, n in enumerate(resolved.label_names)}
    lcfg = LoraConfig(r=rank, lora_alpha=lora_alpha,  # PEFT's hint says int; floats work
                      use_rslora=use_rslora, lora_dropout=0.0, alpha_pattern=alpha_pattern,
                      target_modules=list(saved["targets"]), modules_to_save=heads or None,
                      task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    peft_bridge.copy_into(peft_model, state)
    pc: Any = peft_model.peft_config["default"]
    pc.base_model_name_or_path = canonical_id(cfg.model.name)  # the hub id, never a cache path
    if pc.modules_to_save:  # PEFT appends its own defaults (classifier, score) to the heads: once each
        pc.modules_to_save = list(dict.fromkeys(pc.modules_to_save))
    hub_revision = resolved.revision if resolved.revision and "==" not in str(resolved.revision) else None
    pc.revision = hub_revision
    exported = f"{rnd} (best on validation)" if best else "last" if rnd is None else rnd
    info = {"client": client, "round": exported, "method": cfg.fed.method,
            "rank": rank, "gamma": gamma, "scaling": resolved.scaling,
            "lora_alpha": lora_alpha, "use_rslora": use_rslora, "task": task, "heads": heads,
            "model": cfg.model.name, "base_model": pc.base_model_name_or_path, "revision": resolved.revision,
            "precision": resolved.precision, "labels": resolved.label_names, "targets": list(saved["targets"]),
            "prompt_format": None if task == "classification" else prompts.describe(cfg.data.template)}
    return peft_model.eval(), tok, info


MARK = "sfedlora-export.json"  # what marks a folder as an export: the only kind --force may replace


def check_out(out: Path, force: bool, own_run: Path | None = None) -> None:
    """Refuse an --out that would lose anything but an earlier export: a file, a run folder, a folder inside
    a run folder or holding one, and (without `force`) any non-empty folder; with `force`, only a folder that
    an export wrote (it has MARK, or an adapter/sfedlora.json from before MARK existed) is replaced.
    `own_run`: the run whose lm-eval/ folder may hold its exports (sfedlora eval)."""
    if Path(out).is_symlink():  # it would be replaced as a link while its target stayed
        raise SfedloraError(f"--out {out} is a symbolic link; give the folder itself ({Path(out).resolve()})")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SfedloraError(f"--out {out} is a file; give a folder")
    own = None if own_run is None else Path(own_run).resolve()
    for folder in (out, *out.parents):
        if own is not None and folder == own and own / "lm-eval" in out.parents:
            continue
        if rundir.is_run(folder):
            raise SfedloraError(f"--out {out} is {'a run folder' if folder == out else f'inside the run {folder}'}: "
                                "an export goes to a folder of its own, outside every run")
    if not out.is_dir() or not any(out.iterdir()):
        return
    runs = [p.parent for p in out.rglob(rundir.CONFIG) if rundir.is_run(p.parent)]
    if runs:
        raise SfedloraError(f"--out {out} holds the run {runs[0]}"
                            + (f" and {len(runs) - 1} more" if len(runs) > 1 else "") + "; --force never replaces runs")
    if not force:
        raise SfedloraError(f"--out {out} is not empty; choose another folder, or give --force to replace an "
                            "earlier export there")
    if not ((out / MARK).is_file() or (out / "adapter" / "sfedlora.json").is_file()):
        raise SfedloraError(f"--out {out} is not an export of sfedlora's (it has no {MARK}): --force replaces only "
                            "an earlier export; choose another folder")


def _umask_modes(folder: Path) -> None:
    """Give a folder and everything in it the modes the umask gives new files: mkdtemp makes folders 0700,
    and safetensors writes its files 0600, whatever the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export(run_dir: Path, client: int, out: Path, merged: bool = True, force: bool = False,
           node_dir: Path | None = None, best: bool = False, rnd: int | None = None,
           own_run: Path | None = None) -> dict[str, Any]:
    """Write OUT/adapter (and OUT/merged). OUT must not exist or be empty, or (with `force`) hold an earlier
    export, never a run (check_out); the export is written into a temporary folder beside it and renamed into
    place, so OUT is never half-written or mixed with an earlier export's files. Folders and files get the
    permissions the umask gives."""
    out = Path(out)
    check_out(out, force, own_run)
    peft_model, tok, info = build_peft_model(run_dir, client, node_dir, best, rnd)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folders = [tmp / "adapter"] + ([tmp / "merged"] if merged else [])
        peft_model.save_pretrained(tmp / "adapter")
        if merged:
            peft_model.merge_and_unload().save_pretrained(tmp / "merged")
        summary = rundir.summary(run_dir)
        cfg, _ = rundir.read(run_dir)
        for folder in folders:  # the tokenizer, how this model was trained and is prompted, and its card
            tok.save_pretrained(folder)
            (folder / "sfedlora.json").write_text(json.dumps({**info, "run": str(Path(run_dir).resolve())}, indent=1))
            (folder / "README.md").write_text(model_card.render(info, summary, cfg, folder.name))
        (tmp / MARK).write_text(json.dumps({"run": str(Path(run_dir).resolve()), "client": client}, indent=1))
        _umask_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return info


__all__ = ["export", "build_peft_model", "peft_alpha"]
