"""Evaluation summaries: pure arithmetic over per-client evaluation rows (docs/evaluation.md).

Means over clients are taken over the clients that evaluated something, `uniform` (each client once) and
`weighted` by what each evaluated: examples, tokens for a language model's token loss, decoded examples for
math accuracy; never by aggregation weights. Perplexity is exp of the matching mean token loss, as the
global model's perplexity is exp of its pooled token loss, so that personal and global compare.
"""

from __future__ import annotations

import math
from typing import Any

PRIMARY = {"classification": ("accuracy", True), "instruction": ("perplexity", False), "math": ("accuracy", True)}



COUNTS = ("n", "tokens", "n_decoded")  # what a client evaluated: examples, response tokens, decoded examples


def macro_f1(confusion: list[list[int]]) -> float:
    """Macro-averaged F1 from a confusion matrix (rows: true label, columns: predicted), over the labels that
    occur or are predicted (as scikit-learn's f1_score(average="macro") does); nan with no examples."""
    k = len(confusion)
    scores = []
    for i in range(k):
        tp = confusion[i][i]
        fn = sum(confusion[i]) - tp
        fp = sum(confusion[j][i] for j in range(k)) - tp
        if tp + fn + fp > 0:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else math.nan



def weight_key(metric: str, row: dict[str, Any]) -> str:
    """The count a per-client metric is weighted by: tokens for an LM's token loss, decoded examples for math
    accuracy, evaluated examples otherwise."""
    if metric == "loss" and "tokens" in row:
        return "tokens"
    if metric == "accuracy" and "n_decoded" in row:
        return "n_decoded"
    return "n"



def means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each metric of per-client evaluation rows averaged over the clients that evaluated something:
    `uniform` (every client counts once) and `weighted` (by what each client evaluated, see weight_key: the
    pooled value over all their examples). Perplexity is exp of the matching mean token loss (of the
    token-weighted one: exp of the pooled loss, as the global model's perplexity is computed), never a mean
    of the clients' perplexities."""
    out: dict[str, dict[str, float]] = {}
    for key in rows[0] if rows else []:
        if key in COUNTS or key in ("perplexity", "confusion"):
            continue
        pairs = [(r[key], r[weight_key(key, r)]) for r in rows if r[weight_key(key, r)] > 0]
        total = sum(w for _, w in pairs)
        out[key] = {"uniform": sum(v for v, _ in pairs) / len(pairs) if pairs else math.nan,
                    "weighted": sum(v * w for v, w in pairs) / total if pairs else math.nan}
    if rows and "perplexity" in rows[0]:
        out["perplexity"] = {k: perplexity(v) for k, v in out["loss"].items()}
    if rows and "confusion" in rows[0]:  # weighted = pooled: macro-F1 of the summed confusion counts
        counted = [r["confusion"] for r in rows if r["n"] > 0]
        pooled = [[sum(m[i][j] for m in counted) for j in range(len(counted[0]))] for i in range(len(counted[0]))] \
            if counted else []
        out["macro_f1"]["weighted"] = macro_f1(pooled) if pooled else math.nan
    return out



def perplexity(token_loss: float) -> float:
    """exp of a mean token loss (capped at exp(50), finite); nan stays nan."""
    return token_loss if math.isnan(token_loss) else math.exp(min(token_loss, 50.0))



def personal(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The personalised block of a round's evaluation: per-client rows of each split and their means."""
    return {split: {"clients": rows[split], **means(rows[split])} for split in ("val", "test")}

