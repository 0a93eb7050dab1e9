# Quick start: `make demo` and `make test`. Both install what they need, once.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit bench darktable images clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

# darktable >= 4.4: found (DARKTABLE_CLI, Constants.DARKTABLE_PATH, PATH, own install) or installed
darktable: $(STAMP)
	@$(PY) -m utils.darktable 2>/dev/null || \
	  bash tools/install_darktable.sh "$$($(PY) -c 'import Constants; print(Constants.CACHE_DIR)')"
	@$(PY) -m utils.darktable

images: $(STAMP)
	@$(PY) -m utils.data.images

test: darktable images
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q -m "not darktable"

demo: darktable images
	$(PY) Darktable_proxies.py exposure -n 50 --size 128 --epochs 40 --max-minutes 6

# speed of generation, proxies, training and regression: bench/results.json and a table
bench: darktable images
	$(PY) -m tools.bench

clean:
	rm -rf runs .pytest_cache
