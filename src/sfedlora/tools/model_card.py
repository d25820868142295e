"""The model card (README.md) an export carries, read like a card on the hub: the base model, the adapted
modules in one line, how it was trained, on which data, what it scored and how that round was chosen, the
prompt format, how to load it, and the versions that made it; all from the run folder's own records."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from sfedlora.data import prompts

PACKAGES = ("sfedlora", "torch", "transformers", "peft")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def spans(numbers: list[int]) -> str:
    """0, 1, 2, 5, 7, 8 -> '0-2, 5, 7-8'."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def modules_line(targets: list[str]) -> str:
    """Adapted module names in one line: their types and the layers they are in, e.g. 'q_proj, v_proj in
    layers 0-29 (60 modules)'."""
    layers: dict[str, list[int]] = {}
    for name in targets:
        index = re.findall(r"\.(\d+)\.", f".{name}.")
        layers.setdefault(name.rsplit(".", 1)[-1], []).extend([int(index[0])] if index else [])
    groups: dict[str, list[str]] = {}  # the same layers: one phrase
    for kind, at in layers.items():
        groups.setdefault(spans(at), []).append(kind)
    phrases = [", ".join(kinds) + (f" in layers {where}" if where else "") for where, kinds in groups.items()]
    return "; ".join(phrases) + f" ({plural(len(targets), 'module')})"


def _pick(summary: dict[str, Any], which: str) -> tuple[str, str]:
    """(the personalised test metric, the round) of the summary's `best` or `last` pick."""
    pick = summary.get("personal", {}).get(which)
    if not pick:
        return "-", "-"
    value = pick["test"]
    value = value["weighted"] if isinstance(value, dict) else value
    return f"{value:.4f}", str(pick["round"])


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _prompt(cfg: Any, info: dict[str, Any]) -> list[str]:
    if info["task"] == "classification":
        return [f"Sequence classification over {len(info['labels'])} labels: {', '.join(info['labels'])} "
                "(`config.id2label`). Input: the text" + (" and the second text of the pair." if
                                                         cfg.data.text_pair_field else ".")]
    if cfg.data.template == "chat":
        return ["The tokenizer's chat template (saved with it): the instruction and its input as one user turn, "
                "the response as the assistant turn."]
    return ["Alpaca format; the response follows `### Response:` and ends with the end-of-sequence token:", "",
            "```text", prompts.ALPACA_NO_INPUT.rstrip(), "```", "", "and, for a record with an input:", "",
            "```text", prompts.ALPACA_INPUT.rstrip(), "```"]


def _load(info: dict[str, Any], kind: str) -> list[str]:
    auto = "AutoModelForSequenceClassification" if info["task"] == "classification" else "AutoModelForCausalLM"
    if kind == "merged":
        return ["```python", f"from transformers import AutoTokenizer, {auto}", "",
                f'model = {auto}.from_pretrained("path/to/this/folder")',
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```"]
    return ["```python", "from peft import PeftModel", f"from transformers import AutoTokenizer, {auto}", "",
            f'base = {auto}.from_pretrained("{info["base_model"]}"'
            + (f", num_labels={len(info['labels'])})" if info["task"] == "classification" else ")"),
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```"]


def render(info: dict[str, Any], summary: dict[str, Any], cfg: Any, kind: str) -> str:
    """Markdown for OUT/adapter (kind 'adapter') or OUT/merged (kind 'merged')."""
    gamma = info["gamma"]
    gamma_text = (f"per module, {min(gamma.values()):.4g} to {max(gamma.values()):.4g} (adaptive N_eff)"
                  if isinstance(gamma, dict) else f"{gamma:.6g}")
    metric = summary.get("metric", "metric")
    best, best_round = _pick(summary, "best")
    last, last_round = _pick(summary, "last")
    t, fed = cfg.train, cfg.fed
    per_round = f"{fed.clients_per_round} sampled per round" if fed.clients_per_round else "all in every round"
    revision = f" (revision `{info['revision']}`)" if info.get("revision") else ""
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: " + ("peft" if kind == "adapter" else "transformers"),
        "pipeline_tag: " + ("text-classification" if info["task"] == "classification" else "text-generation"),
        "tags: [sfedlora, federated-learning, lora, " + info["method"] + "]",
        "---",
        f"# Client {info['client']} of a federated LoRA run ({info['method']})",
        "",
        f"A LoRA adapter{' merged into its base' if kind == 'merged' else ''} for `{info['base_model']}`{revision}, "
        f"fine-tuned by federated learning with sfedlora: client {info['client']}'s own model "
        + ("(its B with the shared, averaged A)." if info["method"] in ("fedsa-lora", "fedsa-rslora", "sfed-lora")
           else "after the last aggregation it received."),
        "",
        "## Adapted modules",
        "",
        modules_line(info["targets"]) + f", rank {info['rank']}.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{info['method']}` |",
        f"| scaling rule | `{info['scaling']}`: gamma {gamma_text} (alpha {cfg.lora.alpha}, rank {info['rank']}) |",
        f"| clients | {fed.clients}, {per_round}, aggregation weighted by {fed.weighting} |",
        f"| rounds | {plural(fed.rounds, 'round')} of {plural(fed.local_steps, 'local step')}, batch "
        f"{t.batch_size} per client |",
        f"| optimizer | {t.optimizer}, learning rate {t.lr:g} ({t.lr_schedule}) |",
        f"| precision | base at {info['precision']}, adapters in fp32"
        + (f", base quantised `{cfg.model.quantization}`" if cfg.model.quantization != "none" else "") + " |",
        f"| data | `{cfg.data.source}`, partition `{cfg.data.partition}`"
        + (f" (alpha {cfg.data.dirichlet_alpha:g})" if cfg.data.partition == "dirichlet" else "")
        + f", {cfg.data.val_fraction:g} of each "
        f"client's records for validation and {cfg.data.test_fraction:g} for test, seed {cfg.seed} |",
        "",
        "## Evaluation",
        "",
        f"Personalised test {metric}: each client's own model on its own test split, averaged over the clients "
        "weighted by what each evaluated. The best round is chosen on the clients' validation splits, never on "
        "test.",
        "",
        "| | round | test " + metric + " |",
        "|---|---|---|",
        f"| best on validation | {best_round} | {best} |",
        f"| last | {last_round} | {last} |",
        "",
        "This export is of " + ("the last round." if info.get("round", "last") == "last" else
                                f"round {info['round']}."),
        "",
        "## Input format",
        "",
        *_prompt(cfg, info),
        "",
        "## How to load it",
        "",
        *_load(info, kind),
        "",
        "## Framework versions",
        "",
        versions() + ". Everything about the run is in `sfedlora.json` beside this file.",
        "",
    ]
    return "\n".join(lines)
