# The two commands of the README: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp records the hash of pyproject.toml: a second `make setup` on a ready machine only
# compares hashes and checks the system libraries, so it takes a few seconds.
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# Open3D: libusb (import), GL/EGL, OpenMP; its offscreen renderer uses Vulkan, on CPU-only machines through
# Mesa's lavapipe driver (mesa-vulkan-drivers).
SYSLIBS := libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers
PYTEST_ARGS ?=

.PHONY: setup syslibs test demo lint clean-venv

setup: syslibs $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# Open3D's wheel links against these system libraries; install them when we can, else say how.
syslibs:
	@missing=""; for p in $(SYSLIBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing system libraries:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Open3D needs system libraries that are missing. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/grounding demo

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
