"""A round's record holds per-client fields for the clients that trained, by index (it grows with the
participants, not with N); records of older runs hold lists over all N clients, and both read alike."""

from __future__ import annotations

from types import SimpleNamespace

from sfedlora.runtime.records import client_value, client_values, clients_mean, round_record, row

STAT = {"loss": 1.5, "grad_norm_A": 0.2, "grad_norm_B": 0.4, "out_mean": 0.0, "out_var": 0.01,
        "grad_norm_A_steps": [0.1, 0.3], "grad_norm_B_steps": [0.4, 0.4]}


def test_a_record_holds_the_trained_clients_only():
    resolved = SimpleNamespace(scaling="sfed", gammas=[5.0] * 10_000, ranks=[8] * 10_000)
    stats = {9_999: {**STAT, "loss": 2.5}, 7: STAT}  # 2 of 10,000 clients trained
    rec = round_record(3, "sfed-lora", resolved, 10_000, stats, None, 1.0, 0.5, 2.0)
    assert rec["n_clients"] == 10_000
    assert rec["train_loss"] == {"7": 1.5, "9999": 2.5} and list(rec["train_loss"]) == ["7", "9999"]
    assert rec["gamma"] == {"7": 5.0, "9999": 5.0} and rec["rank"] == {"7": 8, "9999": 8}
    assert rec["grad_norm_A_steps"]["9999"] == [0.1, 0.3] and rec["adapter_out_var"]["7"] == 0.01
    assert len(str(rec)) < 1_000  # lists over every client: 8 x 10,000 entries
    assert round_record(0, "sfed-lora", resolved, 10_000, {}, None, 0.0, 0.5, 0.5)["train_loss"] == {}


def test_both_forms_read_alike():
    new = {"7": 1.0, "12": 3.0, "2": None}  # by client index, ordered by index when read
    old = [None, None, None, None, None, None, None, 1.0, None, None, None, None, 3.0]  # over all N
    assert client_values(new) == client_values(old) == [1.0, 3.0]
    assert clients_mean(new) == clients_mean(old) == 2.0
    assert client_value(new, 12) == client_value(old, 12) == 3.0
    assert client_value(new, 5) is None and client_value(old, 5) is None and client_value(old, 40) is None
    assert clients_mean({}) is None and clients_mean([None, None]) is None and clients_mean(None) is None


def test_the_console_row_means_over_the_trained_clients():
    resolved = SimpleNamespace(scaling="sfed", gammas=[5.0] * 4, ranks=[8] * 4)
    rec = round_record(1, "sfed-lora", resolved, 4, {0: STAT, 3: {**STAT, "loss": 2.5}}, None, 1.0, 0.5, 2.0)
    assert row(rec, "accuracy").split()[:2] == ["1", "2"]  # round 1, train loss (1.5 + 2.5) / 2
