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

# .venv-tpu: .venv's packages (a .pth) plus libtpu at requirements-tpu.txt's pin, so tests compile for a TPU
# topology on this CPU machine (tests/test_tpu_compile.py) while .venv itself stays CPU-only.
TPU_COMPILE_STAMP := .venv-tpu/.libtpu-installed
$(TPU_COMPILE_STAMP): $(STAMP) requirements-tpu.txt
	test -x .venv-tpu/bin/python || $(PY) -m venv .venv-tpu
	$(PY) -c 'import site; print(site.getsitepackages()[0])' > \
	  "$$(.venv-tpu/bin/python -c 'import site; print(site.getsitepackages()[0])')/ringlm-venv.pth"
	.venv-tpu/bin/python -m pip install -q --no-deps $$(grep '^libtpu==' requirements-tpu.txt)
	touch $(TPU_COMPILE_STAMP)

train: setup
	$(PY) main.py --config=configs/tiny.py --workdir=runs/tiny

test: setup $(TPU_COMPILE_STAMP)
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
