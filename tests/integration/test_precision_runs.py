"""Whole runs at either precision: `auto` recorded as what it became on a faked CPU of each kind, and a bf16
run's export checked with tolerances that hold where bf16 matmuls are native and where they are emulated."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from sfedlora.adapters.inject import load_group
from sfedlora.config import load_config
from sfedlora.runtime import resolve
from sfedlora.simulation import Simulation

AVX2 = "flags\t\t: fpu vme de pse tsc msr pae mce sse sse2 ssse3 fma avx avx2 bmi1 bmi2"


AVX512_BF16 = AVX2 + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16"


TINY = ["model.name=tiny-bert", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "fed.rounds=1", "fed.local_steps=2",
        "train.batch_size=4", "lora.rank=4", "eval.max_examples=8"]


@pytest.mark.parametrize(("flags", "expected", "dtype"), [(AVX2, "fp32", torch.float32),
                                                          (AVX512_BF16, "bf16", torch.bfloat16)])
def test_a_run_records_the_precision_auto_became(monkeypatch, sentiment_file, tmp_path, flags, expected, dtype):
    monkeypatch.setattr(resolve, "cpu_flags", lambda: flags)
    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY])
    assert cfg.model.precision == "auto"
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    sim.run()
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert recorded["precision"] == expected
    layer = next(m for n, m in sim.model.named_modules() if n.endswith("attention.self.query"))
    assert layer.base_layer.weight.dtype == dtype and layer.lora_A.dtype == torch.float32  # adapters stay fp32


def test_bf16_run_exports_an_adapter_that_reproduces_it(sentiment_file, tmp_path):
    """A bf16 run's export on a bf16 base gives the run's logits up to bf16 rounding, and on an fp32 base
    (what `export` merges into) up to the base's own bf16 rounding; both bounds hold for native and
    emulated bf16 matmuls (bf16 keeps 8 significant bits: a relative error of 2**-8 = 0.004 per rounding)."""
    from peft import PeftModel

    from sfedlora.cli import main
    from sfedlora.runtime.models import load_model

    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, "model.precision=bf16", "fed.rounds=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on an AVX2 CPU: the warning is expected
        sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    sim.run()
    assert main(["export", str(tmp_path / "run"), "--client", "0", "--out", str(tmp_path / "exp"), "--no-merged"]) == 0
    ids = torch.randint(1, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    load_group(sim.model, [sim.states[0]], [sim.resolved.gammas[0]])
    with torch.no_grad():
        ours = sim.model(input_ids=ids).logits.float()
        for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 5e-2)):
            base, _ = load_model("tiny-bert", "classification", 3, dtype)
            peft = PeftModel.from_pretrained(base, str(tmp_path / "exp" / "adapter")).eval()
            theirs = peft(input_ids=ids).logits.float()
            scale = float(ours.abs().max())
            assert float((theirs - ours).abs().max()) <= tol * scale, dtype  # measured 0.003, 0.006 x scale
            with peft.disable_adapter():  # and the adapter matters at this tolerance
                assert float((peft(input_ids=ids).logits.float() - ours).abs().max()) > 4 * tol * scale
