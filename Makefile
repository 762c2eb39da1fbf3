# Two commands for a new user: `make demo` and `make test`.
# Both create .venv on first use. Elsewhere, pick your own torch build, e.g.
#   make TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu" test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
# pytest-xdist workers for `make test`: one per core, at most 4 (each holds its own torch)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/urbanseg demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# the inner loop: everything but the end-to-end tests marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
