"""model.precision=auto on both kinds of CPU this project runs on, resolved from a faked CPU probe (so
neither branch depends on the machine CI gets), and on CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch

from sfedlora.runtime import resolve

AVX2 = "flags\t\t: fpu vme de pse tsc msr pae mce sse sse2 ssse3 fma avx avx2 bmi1 bmi2"


AVX512_BF16 = AVX2 + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16"


AMX = AVX2 + " avx512f amx_tile amx_bf16 amx_int8"


CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "expected"), [(AVX2, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"), ("", "fp32")])
def test_auto_precision_follows_the_cpu_probe(monkeypatch, flags, expected):
    monkeypatch.setattr(resolve, "cpu_flags", lambda: flags)
    assert resolve.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert resolve.resolve_precision("auto", torch.device("cuda")) == expected


def test_explicit_bf16_warns_only_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(resolve, "cpu_flags", lambda: AVX2)
    with pytest.warns(UserWarning, match="emulated"):
        assert resolve.resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(resolve, "cpu_flags", lambda: AVX512_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve.resolve_precision("bf16", CPU) == "bf16"
    assert resolve.resolve_precision("fp32", CPU) == "fp32"
