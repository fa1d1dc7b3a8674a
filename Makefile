# The two commands of the README. Both work on a fresh machine: they create .venv, install the
# Python packages from PyPI and build fastad as a wheel with maturin.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install bench

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Builds the release wheel and installs it (not editable: tests import the installed package).
install: $(PY)
	$(PY) -m pip install --quiet "numpy>=1.21" "pytest>=7" "maturin>=1.5,<2"
	$(PY) -m pip install --quiet --force-reinstall --no-deps .

# The main job: the seed workloads' benchmark table.
demo: install
	$(PY) -m fastad

# Everything: Rust unit and integration tests (with fastad's pool, then on rayon's), then the
# Python tests against the installed wheel.
test: install
	cargo test
	cargo test --features rayon
	cd tests && ../$(PY) -m pytest -q -p no:cacheprovider .

bench: install
	cargo bench
	cargo bench --features rayon --bench executors
	$(PY) benches/compare.py
