"""`sfedlora eval RUN --lm-eval TASKS`: a client's exported model under EleutherAI's lm-evaluation-harness.

The client is exported as usual (tools.export: a PEFT adapter folder, RUN/lm-eval/client-I/adapter) and
lm-eval's own `hf` model loads the base model with that adapter (`pretrained=<base>, peft=<adapter>`), the
way anyone would evaluate the export; FLoRA, whose updates live in the base weights, is evaluated from the
merged export instead. Tasks are lm-eval task names, or tasks of your own from YAML files in
`include_path` (lm-eval reads local JSON/CSV data through `dataset_path: json`, offline). Results go to
RUN/lm-eval/client-I.json (lm-eval's results, configs and versions, and how the model was loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfedlora.errors import SfedloraError
from sfedlora.methods import METHODS
from sfedlora.runtime import rundir
from sfedlora.runtime.models import loadable_base
from sfedlora.tools.export import export


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise SfedloraError("sfedlora eval --lm-eval needs lm-evaluation-harness: pip install 'sfedlora[eval]' "
                            "(or pip install lm-eval)") from None
    return lm_eval


def model_args(cfg: Any, resolved: Any, folder: Path, precision: str, device: str) -> dict[str, Any]:
    """lm-eval's `hf` model arguments for a run's export in `folder`: the base with the PEFT adapter, or the
    merged model when the run merged updates into the base (FLoRA)."""
    dtype = "bfloat16" if precision == "bf16" else "float16" if precision == "fp16" else "float32"
    common = {"dtype": dtype, "device": device, "tokenizer": str(folder / "adapter")}
    if (folder / "merged").exists():
        return {**common, "pretrained": str(folder / "merged")}
    args = {**common, "pretrained": loadable_base(cfg.model.name), "peft": str(folder / "adapter")}
    if resolved.revision and "==" not in str(resolved.revision):  # a hub commit, not an offline package
        args["revision"] = resolved.revision
    return args


def evaluate(run_dir: Path, client: int, tasks: list[str], include_path: Path | None = None,
             limit: float | None = None, batch_size: int = 8, num_fewshot: int | None = None,
             best: bool = False, rnd: int | None = None, device: str | None = None,
             log_samples: bool = False, node_dir: Path | None = None) -> dict[str, Any]:
    """Run lm-eval's `tasks` on client `client`'s model (its last round, or `best` / `rnd`); returns
    {task: {metric: value}} and writes RUN/lm-eval/client-I.json (with `log_samples` also every scored
    document and the model's responses, RUN/lm-eval/client-I.samples.jsonl). A Flower run's client is read from
    the directory of the node that trained it (`node_dir`)."""
    import torch

    lm_eval = _require_lm_eval()
    from lm_eval.tasks import TaskManager

    run_dir = Path(run_dir)
    cfg, resolved = rundir.read(run_dir)
    if resolved.task == "classification":
        raise SfedloraError(f"{run_dir} trained a sequence classifier; lm-eval evaluates causal language models "
                            "(instruction and math runs)")
    if include_path is not None and not Path(include_path).is_dir():
        raise SfedloraError(f"--include-path {include_path} is not a folder of lm-eval task YAML files")
    folder = run_dir / "lm-eval" / f"client-{client}"
    # FLoRA's updates live in the base weights: only its merged model is the client's model
    info = export(run_dir, client, folder, merged=METHODS[cfg.fed.method].merges_into_base, force=True,
                  node_dir=node_dir, best=best, rnd=rnd, own_run=run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = model_args(cfg, resolved, folder, resolved.precision if device != "cpu" else "fp32", device)
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SfedloraError(f"lm-eval knows no task {', '.join(unknown)}" + (
            f" (nor do the task files in {include_path})" if include_path else
            " (tasks of your own: give the folder of their YAML files with --include-path)"))
    out = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=tasks, task_manager=manager, limit=limit,
                                  batch_size=batch_size, num_fewshot=num_fewshot, log_samples=log_samples,
                                  apply_chat_template=cfg.data.template == "chat")
    results = {task: {k: v for k, v in values.items() if k not in ("alias", "name")}
               for task, values in out["results"].items()}
    record = {"run": str(run_dir.resolve()), "client": client, "round": info["round"], "model_args": args,
              "limit": limit, "num_fewshot": num_fewshot, "chat_template": cfg.data.template == "chat",
              "results": results, "n_samples": out.get("n-samples"), "versions": out.get("versions"),
              "lm_eval_version": out.get("lm_eval_version")}
    (run_dir / "lm-eval" / f"client-{client}.json").write_text(json.dumps(record, indent=1, default=str))
    if log_samples:
        with open(run_dir / "lm-eval" / f"client-{client}.samples.jsonl", "w") as f:
            for task, docs in out["samples"].items():
                for doc in docs:
                    f.write(json.dumps({"task": task, "doc_id": doc["doc_id"], "doc": doc["doc"],
                                        "arguments": doc["arguments"], "resps": doc["resps"],
                                        "filtered_resps": doc["filtered_resps"]}, default=str) + "\n")
    return results


def report_lines(results: dict[str, Any], run_dir: Path, client: int) -> list[str]:
    """One line per task: each metric with its standard error; then where the record is."""
    def shown(k: str, v: float, values: dict[str, Any]) -> str:  # lm-eval names them "acc,none", "acc_stderr,none"
        err = values.get(k.replace(",", "_stderr,"))  # a number, or "N/A" where lm-eval has none (one document)
        return f"{k.split(',')[0]} {v:.4f}" + (f" (stderr {err:.4f})" if isinstance(err, float) else "")

    lines = [f"{task}: " + ", ".join(shown(k, v, values) for k, v in values.items()
                                     if isinstance(v, float) and "stderr" not in k)
             for task, values in results.items()]
    folder = run_dir / "lm-eval"
    return [*lines, f"written: {folder}/client-{client}.json (the export in {folder}/client-{client}/)"]


__all__ = ["evaluate", "model_args", "report_lines"]
