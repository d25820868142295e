"""The model card (README.md) an export carries: what the model is, how it was trained, how to load it,
and what it scored, from the run folder's own records."""

from __future__ import annotations

from typing import Any


def _metric(summary: dict[str, Any], which: str) -> str:
    pick = summary.get("personal", {}).get(which)
    if not pick:
        return "-"
    value = pick["test"]
    value = value["weighted"] if isinstance(value, dict) else value
    return f"{value:.4f} (round {pick['round']})"


def render(info: dict[str, Any], summary: dict[str, Any], cfg: Any, kind: str) -> str:
    """Markdown for OUT/adapter (kind 'adapter') or OUT/merged (kind 'merged')."""
    gamma = info["gamma"]
    gamma_text = (f"per module, {min(gamma.values()):.4g} to {max(gamma.values()):.4g} (adaptive N_eff)"
                  if isinstance(gamma, dict) else f"{gamma:.6g}")
    metric = summary.get("metric", "metric")
    load = (f"peft.PeftModel.from_pretrained(base, '<this folder>') on base `{info['base_model']}`"
            if kind == "adapter" else "transformers' from_pretrained('<this folder>') (adapters merged into W0)")
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: " + ("peft" if kind == "adapter" else "transformers"),
        "tags: [sfedlora, federated-learning, lora]",
        "---",
        f"# Client {info['client']} of a federated LoRA run ({info['method']})",
        "",
        f"Trained with [sfedlora](https://github.com/) by federated fine-tuning: {cfg.fed.clients} clients, "
        f"{cfg.fed.rounds} rounds of {cfg.fed.local_steps} local steps, method `{info['method']}`, scaling rule "
        f"`{info['scaling']}`, rank {info['rank']}, gamma {gamma_text}, alpha {cfg.lora.alpha}, adapted modules "
        f"{', '.join(info['targets'])}.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{info['base_model']}`" + (f" ({info['revision']})" if info.get("revision") else "") + " |",
        f"| task | {info['task']}" + (f", labels {', '.join(info['labels'])}" if info.get("labels") else "") + " |",
        f"| data | `{cfg.data.source}`, partition `{cfg.data.partition}`, seed {cfg.seed} |",
        f"| precision trained at | {info['precision']} |",
        f"| round exported | {info.get('round', 'last')} |",
        f"| prompt format | {info['prompt_format'] or 'none (classification)'} |",
        f"| personalised test {metric}, best on validation | {_metric(summary, 'best')} |",
        f"| personalised test {metric}, last round | {_metric(summary, 'last')} |",
        "",
        f"Load: {load}. For the FedSA family this client's model is its own B with the shared A. Everything "
        "about the run is in `sfedlora.json` beside this file.",
        "",
    ]
    return "\n".join(lines)
