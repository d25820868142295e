"""Bad data is a clear error naming the records (or skipped and counted), never an extra class or a crash;
files are read record by record as UTF-8; over-long text is cut without changing what the model sees."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfedlora.config import load_config
from sfedlora.data import files, records
from sfedlora.data.partition import ClientData
from sfedlora.errors import SfedloraError


def _rows(n=6):
    return [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(n)]


@pytest.mark.parametrize(("change", "why"), [
    (lambda r: r.pop("text"), "no text"),
    (lambda r: r.update(text=None), "no text"),
    (lambda r: r.update(label=None), "no label"),
    (lambda r: r.update(text=3), "text is a int, not text"),
    (lambda r: r.update(label="pos "), "label 'pos ' has surrounding whitespace"),
    (lambda r: r.update(label=1.5), "label 1.5 is a float"),
    (lambda r: r.update(label=True), "label True is a bool"),
])
def test_each_bad_record_is_named(change, why):
    rows = _rows()
    change(rows[2])
    with pytest.raises(SfedloraError, match=rf"1 of 6 records of 'f.jsonl' cannot be used: {why}.*record 3\)"):
        records.check(rows, "classification", "f.jsonl")
    good, skipped = records.check(rows, "classification", "f.jsonl", on_bad="skip")
    assert skipped == 1 and len(good) == 5 and rows[2] not in good


def test_many_bad_records_are_summarised():
    rows = _rows(20)
    for r in rows[:8]:
        r["label"] = None
    with pytest.raises(SfedloraError, match=r"no label \(records 1, 2, 3, 4, 5 and 3 more\)"):
        records.check(rows, "classification", "f")


def test_mixed_label_types_stop_even_when_skipping():
    rows = _rows()
    rows[4]["label"] = 1
    for on_bad in ("error", "skip"):
        with pytest.raises(SfedloraError, match=r"mixes label types \(str labels in records 1, 2, 3; int labels in "
                                                r"records 5\)"):
            records.check(rows, "classification", "f", on_bad=on_bad)
    ints = [{"text": "a", "label": i % 3} for i in range(6)]
    assert records.check(ints, "classification", "f") == (ints, 0)


def test_instruction_and_math_records():
    ok = {"prompt": "Add.", "response": "It is 4.", "answer": "4"}
    assert records.problem(ok, "math", False) is None
    assert records.problem({**ok, "response": "  "}, "instruction", False) == "empty response"
    assert records.problem({**ok, "prompt": ""}, "instruction", False) is None  # an empty instruction is allowed
    assert records.problem({k: v for k, v in ok.items() if k != "answer"}, "math", False) == "no answer"
    assert records.problem({**ok, "input": 7}, "instruction", False) == "input is a int, not text"
    assert records.problem({"text": "a", "label": "x"}, "classification", True) == "no text_pair"


RECORD = st.dictionaries(st.sampled_from(["text", "label", "text_pair", "other"]),
                         st.one_of(st.none(), st.text(max_size=6), st.integers(-3, 3), st.floats(), st.booleans(),
                                   st.lists(st.integers(), max_size=2)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORD, max_size=8), st.sampled_from(["error", "skip"]))
def test_random_records_are_checked_never_crash(rows, on_bad):
    try:
        good, skipped = records.check(rows, "classification", "f", on_bad=on_bad)
    except SfedloraError:
        return
    assert len(good) + skipped == len(rows)
    assert all(isinstance(r["text"], str) and type(r["label"]) in (str, int) for r in good)
    assert len({type(r["label"]) for r in good}) == 1
    assert all(r["label"] == r["label"].strip() for r in good if isinstance(r["label"], str))


def test_files_are_read_as_utf8_and_problems_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9", "label": "a"}\n\n{"text": "b\xe9", "label": "b"}\n')
    with pytest.raises(SfedloraError, match=r"d.jsonl:3 is not UTF-8 text"):
        files.read(p, 100)
    p.write_text('{"text": "ok", "label": "a"}\n{"text": "no end\n')
    with pytest.raises(SfedloraError, match=r"d.jsonl:2 is not a JSON record"):
        files.read(p, 100)
    p.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(SfedloraError, match="record 2 is a list, not a mapping"):
        files.read(p, 100)
    p.write_text("\n\n")
    with pytest.raises(SfedloraError, match="holds no records"):
        files.read(p, 100)
    p.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9", "label": "a"}\n')  # a BOM is fine
    assert files.read(p, 100) == ([{"text": "café", "label": "a"}], 0)


def test_json_and_csv(tmp_path):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    (tmp_path / "l.json").write_text(json.dumps(rows))
    (tmp_path / "c.json").write_text(json.dumps({"text": ["a", "b"], "label": ["x", "y"]}))
    (tmp_path / "d.csv").write_text("text,label\na,x\n\"b\",y\n")
    for name in ("l.json", "c.json", "d.csv"):
        assert files.read(tmp_path / name, 100) == (rows, 0), name
    (tmp_path / "e.csv").write_text("text,label\na,x,extra\n")
    with pytest.raises(SfedloraError, match="e.csv:2 has more values than the header"):
        files.read(tmp_path / "e.csv", 100)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SfedloraError, match="must end in .jsonl, .json, .csv"):
        files.read(tmp_path / "f.txt", 100)


def test_a_huge_value_keeps_its_first_and_last_cap_characters(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "a" * 10 + "m" * 1000 + "z" * 10, "label": "x"}) + "\n"
                 + json.dumps({"text": "short", "label": "y"}) + "\n")
    rows, n_cut = files.read(p, 10)
    assert n_cut == 1 and rows[0]["text"] == "a" * 10 + "z" * 10 and rows[1]["text"] == "short"


def test_cutting_changes_nothing_the_model_sees():
    """Long prompts (cut from the left), responses and texts (cut from the right): the encoded examples of
    cut and uncut records are identical at the cap data.sources uses."""
    from sfedlora.data.encode import encode
    from sfedlora.runtime.models import load_model

    _, tok = load_model("tiny-llama", "instruction")
    words = [f"w{i}" for i in range(4000)]
    rows = [{"prompt": " ".join(words[i:]), "input": " ".join(words[:2000]), "response": " ".join(words[:3000 - i])}
            for i in range(0, 40, 10)]
    for ml in (16, 64):
        cfg = load_config(None, ["model.name=tiny-llama", f"model.max_length={ml}"])
        cut = copy.deepcopy(rows)
        assert all(files.cut(r, ml * files.CHARS_PER_TOKEN) for r in cut)
        a = encode({0: ClientData(rows, [], [])}, "instruction", tok, cfg)[0].train
        b = encode({0: ClientData(cut, [], [])}, "instruction", tok, cfg)[0].train
        assert [x["input_ids"].tolist() for x in a] == [x["input_ids"].tolist() for x in b]
        assert [x["n_prompt"] for x in a] == [x["n_prompt"] for x in b]


@pytest.mark.parametrize("task", ["classification", "math"])
def test_clients_encoded_together_equal_each_encoded_alone(task):
    """One tokenizer call for every client (set-up's) gives each client exactly what its own call gives:
    rows, evaluation caps, sort order, the math decode sample and the shown samples."""
    from sfedlora.data.encode import encode
    from sfedlora.runtime.models import load_model

    model = "tiny-bert" if task == "classification" else "tiny-llama"
    _, tok = load_model(model, task, 3)
    row = (lambda i: {"text": "word " * (1 + i % 7), "label": i % 3}) if task == "classification" else (
        lambda i: {"prompt": "add " * (1 + i % 5), "response": f"{i} " * (1 + i % 3), "answer": str(i)})
    clients = {c: ClientData([row(i) for i in range(5 + c)], [row(i) for i in range(2 * c + 1)],
                             [row(i + 3) for i in range(c + 3)]) for c in range(4)}
    cfg = load_config(None, [f"model.name={model}", "model.max_length=16", "eval.max_examples=3",
                             "eval.generate_examples=2", "eval.samples=2"])
    together = encode(clients, task, tok, cfg)
    as_lists = lambda rows: [{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()} for r in rows]
    for c, data in clients.items():
        alone = encode({c: data}, task, tok, cfg)[c]
        for split in ("train", "val", "test", "samples"):
            assert as_lists(getattr(together[c], split)) == as_lists(getattr(alone, split))
        assert {k: as_lists(v) for k, v in together[c].decode.items()} == {
            k: as_lists(v) for k, v in alone.decode.items()}
    assert [len(together[c].val) for c in range(4)] == [1, 3, 3, 3]  # eval.max_examples
    assert len(together[3].samples) == (0 if task == "classification" else 2)


def test_config_checks_up_front(tmp_path):
    with pytest.raises(SfedloraError, match=r"lora.dropout must be in \[0, 1\), got 1.0"):
        load_config(None, ["lora.dropout=1.0"])
    with pytest.raises(SfedloraError, match=r"fed.min_clients \(3\) exceeds the clients a round has \(2"):
        load_config(None, ["fed.clients=4", "fed.clients_per_round=2", "fed.min_clients=3"])
    (tmp_path / "e.yaml").write_text("# nothing here\n")
    with pytest.warns(UserWarning, match="e.yaml is empty: the run uses the defaults"):
        load_config(tmp_path / "e.yaml")


def test_a_missing_local_model_path_says_so():
    from sfedlora.runtime.models import model_path

    for name in ("./models/mine", "/nonexistent/model", "a/b/c", "~/nothing-here-xyz"):
        with pytest.raises(SfedloraError, match=f"model path {name} does not exist"):
            model_path(name)
    assert model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_parquet_and_save_to_disk(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"t{i}", "label": "x" if i % 2 else "y"} for i in range(2500)]  # 3 row groups of 1024
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=1024)
    assert files.read(tmp_path / "d.parquet", 100) == (rows, 0)
    datasets.Dataset.from_list(rows[:10]).save_to_disk(str(tmp_path / "one"))
    assert files.read(tmp_path / "one", 100) == (rows[:10], 0)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]),
                          "test": datasets.Dataset.from_list(rows[4:6])}).save_to_disk(str(tmp_path / "dict"))
    assert files.read(tmp_path / "dict", 100, split="test") == (rows[4:6], 0)
    with pytest.raises(SfedloraError, match=r"has the splits train, test, not 'validation'"):
        files.read(tmp_path / "dict", 100, split="validation")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SfedloraError, match="is a folder but not a datasets.save_to_disk one"):
        files.read(tmp_path / "plain", 100)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SfedloraError, match="is not a readable Parquet file"):
        files.read(tmp_path / "bad.parquet", 100)


def test_natural_clients_by_field():
    from sfedlora.data.partition import by_field

    # a x5, b x3, c x2, d x1 over 2 clients: a -> 0 (5), b -> 1 (3), c -> 1 (5), d -> 0 (tie: the lowest)
    keys = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    records = [{"author": k, "i": i} for i, k in enumerate(keys)]
    bins = by_field(records, 2, "author")
    assert sorted({records[i]["author"] for i in bins[0]}) == ["a", "d"] and len(bins[0]) == 6
    assert sorted({records[i]["author"] for i in bins[1]}) == ["b", "c"] and len(bins[1]) == 5
    with pytest.raises(SfedloraError, match="4 distinct values for 5 clients"):
        by_field(records, 5, "author")
    with pytest.raises(SfedloraError, match=r"1 records have no 'author' \(records 12\)"):
        by_field([*records, {"i": 99}], 2, "author")


def test_examples_cut_to_max_length_are_marked():
    from sfedlora.data.batching import encode_classification, encode_lm
    from sfedlora.runtime.models import load_model

    _, tok = load_model("tiny-bert", "classification")
    enc = encode_classification([{"text": "a b c d e f g h", "label": 0}, {"text": "a", "label": 1}], tok, 5)
    assert [e["truncated"] for e in enc] == [True, False] and len(enc[0]["input_ids"]) == 5
    _, tok = load_model("tiny-llama", "instruction")
    rows = [{"prompt": "w " * 400, "response": "x y"}, {"prompt": "hi", "response": "ok"}]
    short = len(encode_lm(rows[1:], tok, 10_000)[0]["input_ids"])
    assert [e["truncated"] for e in encode_lm(rows, tok, short)] == [True, False]


def test_a_by_field_record_without_the_field_is_named_by_its_line(tmp_path):
    """The records reach the partitioner drawn and shuffled: the check names them where they are in the file
    (before: 'records 7', a position after shuffling that matched nothing in the file)."""
    from sfedlora.config import DataConfig
    from sfedlora.data.sources import load_task

    lines = [json.dumps({"text": f"t {i}", "label": "a" if i % 2 else "b", "author": f"u{i % 3}"}) for i in range(8)]
    lines[2] = json.dumps({"text": "no author", "label": "a"})
    lines.insert(4, "")  # a blank line: line numbers and record positions part ways
    lines[6] = json.dumps({"text": "none either", "label": "b"})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source=str(path), task="classification", partition="by_field", partition_by="author")
    with pytest.raises(SfedloraError, match=r"2 records of .* have no 'author' \(line 3, line 7\)"):
        load_task(cfg, seed=0)
