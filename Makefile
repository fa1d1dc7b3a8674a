# The two commands of the README. Both work on a fresh machine: they create .venv, install the
# Python packages from PyPI and build fastad as a wheel with maturin.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-aarch64 install bench

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
# Python tests against the installed wheel (with Dask installed, so fastad.dask's tests run);
# then both again on each narrower instruction set than this CPU's (FASTAD_SIMD caps it: avx2
# and baseline on an AVX-512 CPU, baseline on an AVX2 one), so every kernel level runs. Those
# runs leave out the benchmark demo and the Ctrl-C timings (on the portable kernels one product
# can outlast their one-second bound).
# Last, the crate built for aarch64 (its NEON kernels) and tested under qemu-user.
test: install
	$(PY) -m pip install --quiet "dask[array,distributed]>=2023.1"
	cargo test
	cargo test --features rayon
	cd tests && ../$(PY) -m pytest -q -p no:cacheprovider .
	for level in $$(cd tests && ../$(PY) -c "import fastad; print(' '.join(fastad._narrower_instruction_sets()))"); do \
		echo "== FASTAD_SIMD=$$level"; \
		FASTAD_SIMD=$$level cargo test || exit 1; \
		(cd tests && FASTAD_SIMD=$$level ../$(PY) -m pytest -q -p no:cacheprovider \
			-k "not ctrl_c and not test_main_job_runs" .) || exit 1; \
	done
	$(MAKE) test-aarch64

# The Rust tests on aarch64, cross-compiled and run under Debian's qemu-user (installed here
# when missing), so the NEON micro-kernels are tested on an x86 machine too. zero_alloc.rs runs
# 50 replays there, not 1000: under emulation a replay takes over a second.
AARCH64 := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
test-aarch64:
	rustup target add aarch64-unknown-linux-gnu
	command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null || \
		(apt-get install -y -q qemu-user gcc-aarch64-linux-gnu || \
		 (apt-get update -q && apt-get install -y -q qemu-user gcc-aarch64-linux-gnu))
	$(AARCH64) FASTAD_ZERO_ALLOC_REPLAYS=50 cargo test --release --target aarch64-unknown-linux-gnu \
		--lib --test runners --test eam --test zero_alloc

bench: install
	cargo bench
	cargo bench --features rayon --bench executors
	$(PY) benches/compare.py
	$(PY) benches/gemm_vs_blas.py
	$(PY) -m pip install --quiet "dask[array,distributed]>=2023.1"
	$(PY) benches/dask_fisher.py
