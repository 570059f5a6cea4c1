# Every target bootstraps what it needs: Debian packages (apt-get as root), a .venv, and an
# editable install with the dev extras. Re-running is cheap: stamps skip finished steps.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.framebus-installed
DEBS := scripts/debian-packages.txt
PYTEST_ARGS ?=

.PHONY: setup run test soak lint clean screenshot systemd-check

setup: $(STAMP)

$(STAMP): pyproject.toml $(DEBS) scripts/ensure-debian-packages
	scripts/ensure-debian-packages $(DEBS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/framebus demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# `make soak`: the whole fault matrix and the 30-minute soak (FRAMEBUS_SOAK_SECONDS), then
# docs/RELIABILITY.md is rendered from every recorded run, passing or not.
soak: setup
	$(PY) -m pytest -q -m soak -o addopts='' $(PYTEST_ARGS); status=$$?; \
	$(PY) tests/reliability.py && exit $$status

lint: setup
	$(VENV)/bin/ruff check framebus tests bench scripts scripts/systemd-check
	$(VENV)/bin/mypy framebus bench

# `make systemd-check`: framebus under a real systemd (Debian 12 booted with systemd-nspawn,
# loopback only), installed by README.md's own blocks; as root. About a minute with the rootfs
# cached in .cache/systemd-check, two without (issue 21; scripts/systemd-check says what).
systemd-check: setup
	scripts/systemd-check

# A picture of the status page (headless Chromium) in .cache/status-page.png; RECORD=1 renews
# the README's docs/status-page.png instead (issue 21: only a recording run changes the tree).
SHOT := $(if $(RECORD),docs/status-page.png,.cache/status-page.png)
screenshot: setup
	mkdir -p .cache
	FRAMEBUS_SCREENSHOT=$(SHOT) $(PY) -m pytest -q tests/test_web_browser.py
	@echo "screenshot: $(SHOT)"

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

# `make bench` runs every benchmark (about 9 minutes on 2 cores; each is bounded in time),
# `make bench BENCH=fanout` one of them; BENCH_ARGS=--profile adds py-spy profiles of the
# fan-out and daemon hot paths (pip install py-spy). Results go to .cache/bench/results.json;
# `make bench RECORD=1` records them: bench/results.json and the README table. See README,
# "Benchmarks".
BENCH ?=
BENCH_ARGS ?=
RECORD ?=
BENCH_STAMP := $(VENV)/.framebus-bench-installed

.PHONY: bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m bench.run $(BENCH) $(BENCH_ARGS) $(if $(RECORD),--record)
