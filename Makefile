# The two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each first brings .venv up to date; with nothing changed that takes well under a second.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
# The GPU stereo's Triton kernels are tested on the CPU through Triton's interpreter. CUDA
# builds of torch bring their own Triton, which is kept; the CPU build gets the one it names.
TRITON := "triton~=3.8.0"

# With a ROS 2 distro sourced (a robot), the venv sees the distro's rclpy and messages and the
# PyPI `ros` wheels are not installed; otherwise they are.
ifeq ($(shell test -n "$$ROS_DISTRO" && $(PYTHON) -c 'import rclpy' 2>/dev/null && echo y),y)
  VENV_FLAGS := --system-site-packages
  EXTRAS     := test,export
else
  VENV_FLAGS :=
  EXTRAS     := ros,test,export
endif

# Isolate DDS traffic of tests and demo from anything else on the machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONDONTWRITEBYTECODE := 1

STAMP_KEY = $(shell cat setup.py setup.cfg package.xml Makefile | sha256sum | cut -c1-16)-$(EXTRAS)

.PHONY: env demo test lint format clean

env:
	@if [ -x $(BIN)/python ] && [ "$$(cat $(VENV)/.stamp 2>/dev/null)" = "$(STAMP_KEY)" ]; then \
	  echo "env: $(VENV) is up to date"; \
	else \
	  set -e; \
	  echo "env: installing into $(VENV) (extras: $(EXTRAS)); the first run takes a few minutes"; \
	  [ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV); \
	  $(BIN)/python -m pip install --quiet $(TORCH); \
	  $(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"; \
	  $(BIN)/python -c 'import triton' 2>/dev/null || $(BIN)/python -m pip install --quiet $(TRITON) \
	    || echo "env: no Triton for this machine: the Triton kernel tests will be skipped"; \
	  echo "$(STAMP_KEY)" > $(VENV)/.stamp; \
	  echo "env: ready"; \
	fi

demo: env
	$(BIN)/micro-perception demo

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build install log demo_out .pytest_cache .ruff_cache *.egg-info
