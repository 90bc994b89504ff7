# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
BENCHED = $(VENV)/.installed-bench
# numba's cache of the compiled gather kernels is keyed on their source files: compiled
# again when they change.
WARM    = $(VENV)/.kernels-warm
KERNELS = core/compression/kernels.py core/compression/cpu_fold.py core/compression/elias_fano.py \
          core/compression/select.py core/compression/compiled_sum.py core/warmup.py

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> $(VENV): creating it and installing templar-comms with its dev tools, pinned by"
	@echo "    constraints.txt (torch CPU, numba, bittensor, matplotlib, ...): a few minutes the first time"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(WARM): $(STAMP) $(KERNELS)
	@echo "==> compiling the gather's CPU kernels into numba's cache, so that no neuron compiles them during its first gathers"
	$(VENV)/bin/templar-comms warmup
	touch $(WARM)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

test: lint $(WARM)
	$(PY) -m pytest -q

demo: $(WARM)
	$(VENV)/bin/templar-comms localnet --faulty garbage,copier

# The bench extra (matplotlib, for the chart), installed once, not on every run.
$(BENCHED): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	touch $(BENCHED)

# BENCH_ARGS=--quick for the short run (under 2 minutes).
bench: $(WARM) $(BENCHED)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
