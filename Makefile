PY := .venv/bin/python
PYTHON ?= python3
# cpu (default), tpu (a TPU VM: libtpu) or cuda (an NVIDIA GPU node: the CUDA 12 plugin); pins in requirements*.txt
ACCEL ?= cpu
ACCELS := cpu tpu cuda
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL): use one of $(ACCELS), e.g. make setup ACCEL=tpu)
endif
REQUIREMENTS := $(if $(filter cpu,$(ACCEL)),requirements.txt,requirements-$(ACCEL).txt)
STAMP := .venv/.requirements$(if $(filter cpu,$(ACCEL)),,-$(ACCEL))-installed

.PHONY: setup train test test-interop

setup: $(STAMP)

# Rebuilt only when its requirements change, so `make setup` is a no-op when current.
$(STAMP): requirements.txt $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(REQUIREMENTS)
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
