"""The stacked LoRA layer and injection: B = 0 leaves the model unchanged; per-client rows stay separate."""

import pytest
import torch
from conftest import tiny_bert, tiny_llama
from torch import nn

from sfedlora.adapters.inject import init_adapter_state, inject_adapters, load_group, lora_layers, read_group
from sfedlora.adapters.layer import StackedLoRALinear
from sfedlora.errors import SfedloraError


def test_b_zero_means_base_output_lm():
    base = tiny_llama()
    ids = torch.randint(0, 64, (4, 9))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = tiny_llama()
    inject_adapters(model, "all-attention")
    states = [init_adapter_state(model, 8, torch.Generator().manual_seed(c)) for c in range(2)]
    load_group(model, states, [3.0, 5.0])
    with torch.no_grad():
        got = model(input_ids=ids).logits  # 2 clients x 2 rows
    assert torch.equal(got, expected)


def test_b_zero_means_base_output_classification():
    base = tiny_bert()
    ids = torch.randint(0, 64, (3, 7))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = tiny_bert()
    inject_adapters(model, "qv", head=True)
    load_group(model, [init_adapter_state(model, 4, torch.Generator().manual_seed(0))], [2.0])
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_stacked_layer_hand_computed():
    base = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.eye(2))
    layer = StackedLoRALinear(base)
    # client 0: A = [[1, 0]], B = [[1], [0]], gamma 2 -> h = x + 2 * (x0, 0)
    # client 1: A = [[0, 1]], B = [[0], [1]], gamma 3 -> h = x + 3 * (0, x1)
    layer.set_adapters(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]), torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]),
                       torch.tensor([2.0, 3.0]))
    x = torch.tensor([[1.0, 1.0], [2.0, 3.0]])  # row 0 -> client 0, row 1 -> client 1
    assert torch.equal(layer(x), torch.tensor([[3.0, 1.0], [2.0, 12.0]]))


def test_clients_do_not_share_gradients():
    model = tiny_llama()
    inject_adapters(model, "qv")
    states = [init_adapter_state(model, 4, torch.Generator().manual_seed(c)) for c in range(3)]
    for s in states:
        for k in s:
            if k.endswith("lora_B"):
                s[k].normal_()
    load_group(model, states, [1.0] * 3)
    ids = torch.randint(0, 64, (6, 5))
    logits = model(input_ids=ids).logits
    logits[2:4].sum().backward()  # only client 1's rows
    for layer in lora_layers(model).values():
        grad = layer.lora_A.grad
        assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_round_trip_of_adapter_state():
    model = tiny_llama()
    inject_adapters(model, "qv")
    states = [init_adapter_state(model, 4, torch.Generator().manual_seed(c)) for c in range(2)]
    load_group(model, states, [1.0, 1.0])
    back = read_group(model)
    for s, b in zip(states, back, strict=True):
        assert s.keys() == b.keys() and all(torch.equal(s[k], b[k]) for k in s)


def test_shared_and_independent_init():
    model = tiny_llama()
    inject_adapters(model, "qv")
    same = [init_adapter_state(model, 4, torch.Generator().manual_seed(7)) for _ in range(2)]
    other = init_adapter_state(model, 4, torch.Generator().manual_seed(8))
    key = next(k for k in other if k.endswith("lora_A"))
    assert torch.equal(same[0][key], same[1][key]) and not torch.equal(same[0][key], other[key])
    bound = 1 / 32**0.5  # kaiming-uniform bound 1/sqrt(d_in), d_in = 32
    assert float(other[key].abs().max()) <= bound


def test_presets_pick_the_right_modules():
    names = inject_adapters(tiny_llama(), "qv")
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert len(inject_adapters(tiny_llama(), "all-attention")) == 8
    assert len(inject_adapters(tiny_bert(), "all-attention")) == 8  # query, key, value, attention.output.dense
    assert len(inject_adapters(tiny_bert(), ["query"])) == 2


def test_target_matching_nothing_is_a_clear_error():
    with pytest.raises(SfedloraError, match="match no linear module"):
        inject_adapters(tiny_llama(), ["not_a_module"])


def test_adapter_output_moments_leave_padding_out():
    """The same tokens with and without right padding give the same adapter output mean and variance (before:
    padded positions, whose adapter outputs are not zero, were counted)."""
    from sfedlora.client.optim import StackedOptimizer
    from sfedlora.client.train import train_group
    from sfedlora.config import TrainConfig

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (2, 6), generator=g)
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 6, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)], 1)
    stats = []
    for inputs, attention in ((ids, torch.ones_like(ids)), (padded, mask)):
        model = tiny_llama()
        inject_adapters(model, "qv")
        state = init_adapter_state(model, 4, torch.Generator().manual_seed(1))
        state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) if k.endswith("lora_B") else v
                 for k, v in state.items()}
        load_group(model, [state], [1.0])
        labels = inputs.clone()
        labels[attention == 0] = -100
        batch = {"input_ids": inputs, "attention_mask": attention, "labels": labels, "weight": torch.ones(2)}
        stats.append(train_group(model, lambda b=batch: b, StackedOptimizer(TrainConfig(optimizer="sgd", lr=0.0)),
                                 frozenset({"A", "B"}), 1, TrainConfig(grad_clip=None), "instruction"))
    assert stats[0].out_var[0] > 0
    assert stats[1].out_mean == pytest.approx(stats[0].out_mean, rel=1e-5)
    assert stats[1].out_var == pytest.approx(stats[0].out_var, rel=1e-5)
    assert stats[1].loss == pytest.approx(stats[0].loss, rel=1e-5)
