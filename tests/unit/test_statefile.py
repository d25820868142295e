"""State files: what goes in comes out exactly; a crafted pickle, a flipped bit or a truncated file is refused
with a clear error and never runs or gets used; checkpoints fall back to the previous one with a warning."""

from __future__ import annotations

import os
import pickle
import random

import pytest
import torch

from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, rundir, statefile


class _Payload:
    """Unpickling this runs os.system: the classic crafted-pickle attack."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state():
    rng = random.Random(3)
    return {"adapters": {"l0.A": torch.randn(2, 3), "l0.B": torch.zeros(3, 2, dtype=torch.bfloat16)},
            "opt": [{"step": 4, "exp_avg": torch.ones(2)}], "round": 7, "rng": rng.getstate(),
            "big": 2 ** 100, "none": None, "nan": float("nan")}


def test_round_trip_keeps_every_value_and_type():
    s = _state()
    back = statefile.loads(statefile.dumps(s))
    assert torch.equal(back["adapters"]["l0.A"], s["adapters"]["l0.A"])
    assert back["adapters"]["l0.B"].dtype == torch.bfloat16
    assert back["opt"][0]["step"] == 4 and back["round"] == 7 and back["big"] == 2 ** 100 and back["none"] is None
    assert back["rng"] == s["rng"]  # tuples stay tuples: random.setstate accepts it
    random.Random().setstate(back["rng"])
    assert back["nan"] != back["nan"]


def test_views_and_shared_tensors_are_stored():
    base = torch.arange(12.0).reshape(3, 4)
    back = statefile.loads(statefile.dumps({"t": base.T, "same": [base, base]}))
    assert torch.equal(back["t"], base.T) and torch.equal(back["same"][1], base)


def test_a_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name in (checkpoint.NAME, rundir.ADAPTERS):
        (tmp_path / name).write_bytes(pickle.dumps({"states": _Payload(marker)}))
    with pytest.raises(SfedloraError, match="no usable checkpoint"):
        checkpoint.load(tmp_path)
    with pytest.raises(statefile.StateError, match="not a sfedlora state|truncated|unreadable"):
        rundir.load_adapters(tmp_path)
    with pytest.raises(statefile.StateError):
        statefile.loads(pickle.dumps(_Payload(marker)))
    assert not marker.exists()


def test_old_pickle_files_are_refused_by_name(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"whatever")
    with pytest.raises(SfedloraError, match="old pickle format"):
        checkpoint.load(tmp_path)
    (tmp_path / "adapters.pt").write_bytes(b"whatever")
    with pytest.raises(SfedloraError, match="old pickle format"):
        rundir.load_adapters(tmp_path)


def _flip_a_tensor_bit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def test_a_flipped_bit_or_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    statefile.save(path, _state())
    _flip_a_tensor_bit(path)
    with pytest.raises(statefile.StateError, match="checksum"):
        statefile.load(path)
    statefile.save(path, _state())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(statefile.StateError, match="s.safetensors cannot be used"):
        statefile.load(path)


def test_checkpoint_keeps_two_and_falls_back_with_a_warning(tmp_path):
    checkpoint.save(tmp_path, {"round": 1, "w": torch.ones(4)})
    checkpoint.save(tmp_path, {"round": 2, "w": torch.full((4,), 2.0)})
    assert checkpoint.load(tmp_path)["round"] == 2
    _flip_a_tensor_bit(tmp_path / checkpoint.NAME)
    with pytest.warns(UserWarning, match="checksum mismatch.*previous checkpoint"):
        snap = checkpoint.load(tmp_path)
    assert snap["round"] == 1 and torch.equal(snap["w"], torch.ones(4))
    (tmp_path / checkpoint.PREVIOUS).write_bytes(b"\0" * 5)
    with pytest.raises(SfedloraError, match="no usable checkpoint"):
        checkpoint.load(tmp_path)
    (tmp_path / "fresh").mkdir()
    assert checkpoint.load(tmp_path / "fresh") is None
