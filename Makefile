PY := .venv/bin/python
STAMP := .venv/.requirements-installed

.PHONY: setup train test test-interop

setup: $(STAMP)

# Rebuilt only when requirements.txt changes, so `make setup` is a no-op when current.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

train: setup
	$(PY) main.py --config=configs/tiny.py --workdir=runs/tiny

test: setup
	$(PY) -m pytest -q tests --ignore=tests/interop

INTEROP_PY := .venv-interop/bin/python
INTEROP_STAMP := .venv-interop/.requirements-installed

$(INTEROP_STAMP): requirements-interop.txt requirements.txt
	test -x $(INTEROP_PY) || python3 -m venv .venv-interop
	$(INTEROP_PY) -m pip install -q --upgrade pip
	$(INTEROP_PY) -m pip install -q -r requirements-interop.txt
	touch $(INTEROP_STAMP)

# Hugging Face parity in its own env (torch + transformers, no tensorflow); prints each max logit difference.
test-interop: $(INTEROP_STAMP)
	$(INTEROP_PY) -m pytest -q -s tests/interop tests/test_hf_llama.py tests/test_hf_tokenizer.py
