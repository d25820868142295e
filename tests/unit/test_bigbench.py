"""The BIG-bench reader, on a small sdist made here with the real archive layout."""

import io
import json
import tarfile

from sfedlora.data import bigbench

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"


def add(tar: tarfile.TarFile, name: str, payload: dict) -> None:
    data = json.dumps(payload).encode()
    info = tarfile.TarInfo(f"{ROOT}/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_prepare_and_load(tmp_path, monkeypatch):
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        add(tar, "multiemo/task.json", {"examples": []})
        add(tar, "multiemo/all_sentence_en/task.json", {"examples": [
            {"input": "Great stay.", "target_scores": {"positive": 1, "negative": 0}},
            {"input": "Awful food.", "target_scores": {"positive": 0, "negative": 1}}]})
        add(tar, "multiemo/all_sentence_de/task.json", {"examples": [
            {"input": "Gut.", "target_scores": {"positive": 1, "negative": 0}}]})
        add(tar, "vitaminc_fact_verification/task.json", {"examples": [
            {"input": "Paris: capital of France.\nClaim: Paris is in France.",
             "target_scores": {"True": 1, "False": 0, "Neither": 0}}]})
        add(tar, "natural_instructions/subtask001_demo/task.json", {
            "task_prefix": "Definition: long text. Prompt: Answer briefly.",
            "examples": [{"input": "2+2?", "target": ["4"]}]})
    monkeypatch.setenv("SFEDLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFEDLORA_BIGBENCH_SDIST", str(sdist))
    counts = bigbench.prepare()
    assert counts == {"multiemo": 2, "vitaminc": 1, "natural-instructions": 1}
    assert bigbench.load("multiemo") == [{"text": "Great stay.", "label": "positive"},
                                         {"text": "Awful food.", "label": "negative"}]
    assert bigbench.load("vitaminc") == [{"text": "Paris: capital of France.", "text_pair": "Paris is in France.",
                                          "label": "True"}]
    assert bigbench.load("natural-instructions") == [
        {"prompt": "Answer briefly.\n\n2+2?", "response": "4", "category": "subtask001_demo"}]
