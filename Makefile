# The two set-up commands of the README: `make quickstart` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A bare `torch` requirement pulls the newest CUDA build (several GB); install the pinned build
# first so the project's `torch>=` floor is already satisfied. Override on other machines.
TORCH_SPEC ?= torch==2.13.0
# Where TORCH_SPEC comes from: empty means pip's default index; set it for a build that lives on
# its own index, e.g. CUDA 12.4 wheels:
#   make quickstart TORCH_SPEC="torch==2.6.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
TORCH_INDEX_URL ?=

.PHONY: install quickstart cpu-recipe test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)" )"$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/harness run ablations/quickstart.yaml

# The cpu recipe against the paper's tiny setting on the Wikipedia articles of ../shared/data: two
# runs at a time, one thread each, then their held-out curves as results/bench/cpu-recipe.json.
cpu-recipe: install
	$(BIN)/harness run ablations/cpu-recipe.yaml --jobs 2 --threads 1
	$(BIN)/harness curves results/cpu-recipe --out results/bench/cpu-recipe.json

lint: install
	$(BIN)/ruff check harness tests

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results/_cache
