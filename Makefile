PY := .venv/bin/python
STAMP := .venv/.requirements-installed

.PHONY: setup train test

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
	$(PY) -m pytest -q tests
