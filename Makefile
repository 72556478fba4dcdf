# The README's two commands are `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup imdb clean

# torch is installed first, pinned, so the `torch>=` range in pyproject.toml is already satisfied
# and pip never resolves an unpinned torch (which would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# prepare Tiny Shakespeare (characters) -> train the baby GPT (4x4x128, 2000 steps) -> sample; runs again
# as often as wanted (the data is prepared once, out-demo is replaced)
demo: $(STAMP)
	test -f data/tinyshakespeare/char/meta.json || \
		$(PY) -m minigpt data --input data/tinyshakespeare/input.txt --out data/tinyshakespeare/char
	$(PY) train.py configs/shakespeare_char.toml --out_dir=out-demo --overwrite
	$(PY) sample.py --ckpt out-demo --prompt "ROMEO:" --max_new_tokens=400

# IMDb from nothing: domain tokenizer -> leak-free LM corpus -> pretraining -> fine-tuning -> baselines ->
# out-imdb/report.md (80 min to 2.5 h on 2 CPU cores; reads ../shared/data/imdb). Run it again to continue.
imdb: $(STAMP)
	$(PY) bench/imdb_pipeline.py

clean:
	rm -rf $(VENV) out-demo
