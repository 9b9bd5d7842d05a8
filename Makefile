# The README's two set-up commands: `make run` (the default audit) and `make test`.
# Both create the virtual environment and install pinned dependencies on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
FMNIST_DEB := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
# darknet's photos (dataset `photos`): the folder sanitycheck.data.photos.darknet_dir() reads
DARKNET_DIR ?= $(or $(SANITYCHECK_DARKNET),$(if $(SANITYCHECK_DATA),$(SANITYCHECK_DATA)/darknet,$(or $(SANITYCHECK_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sanitycheck)/data/darknet))
DARKNET_PHOTOS := dog eagle giraffe horses kite person scream

# glibc hands large tensors back to the OS on every step by default; keeping them makes
# CPU training and batched attribution several times faster (PyTorch CPU performance guide).
export MALLOC_MMAP_MAX_      ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 100000000000
export MALLOC_TOP_PAD_       ?= 268435456

.PHONY: run audits test bench bench-quantus env data browser bwrap clean-runs

# The default audit (suite adebayo2018); its built-in explainers published as leaderboard files; the board.
run: env data bwrap
	@out=runs/adebayo2018-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/sanitycheck run --out $$out $(ARGS) && \
	$(BIN)/sanitycheck publish $$out/results.json && \
	$(BIN)/sanitycheck leaderboard --rerun-suites adebayo2018

# Every suite (or SUITES="..."), each published to the leaderboard, then the board: what leaderboard/ holds.
SUITES ?= adebayo2018 petsiuk2018 faithfulness jain_wallace2019 jain_wallace2019_minilm wiegreffe_pinter2019 clip_text2img tcav tcav_imagenet sae_features
audits: env data
	@set -e; for s in $(SUITES); do \
	  out=runs/$$s-$$(date +%Y%m%d-%H%M%S); \
	  $(BIN)/sanitycheck run $$s --out $$out $(ARGS); \
	  $(BIN)/sanitycheck publish $$out/results.json; \
	done; \
	$(BIN)/sanitycheck leaderboard

test: env data browser bwrap
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Headless Chromium for the leaderboard page test (Debian's chromium + chromium-driver, when apt is available).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  echo "installing Debian's chromium and chromium-driver for the leaderboard page test"; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null \
	    || echo "could not install chromium: the page test will skip and say why"; \
	fi

# Debian's bubblewrap: the OS sandbox of `sanitycheck submit` (new user, mount, PID and network namespaces).
# Without it (or without user namespaces) submit refuses untrusted code unless given --trust-code.
bwrap:
	@if command -v bwrap >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  echo "installing Debian's bubblewrap for the sandbox of submitted code"; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q bubblewrap >/dev/null \
	    || echo "could not install bubblewrap: submit will refuse untrusted code (see --trust-code) and the sandbox tests will skip"; \
	fi

bench: env data
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only $(PYTEST_ARGS)

# The side-by-side audit with Quantus 0.6 (optional, pinned extra: pip install -e '.[bench]').
bench-quantus: env data
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/python benchmarks/bench_quantus.py --table --rounds 2

env: $(STAMP)

# torch first, from its exact version: a loose torch requirement would pull a multi-GB CUDA build.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# Fashion-MNIST from Debian when apt is available and the data is absent (or set SANITYCHECK_DATA).
data:
	@if [ -n "$$SANITYCHECK_DATA" ] || [ -f $(FMNIST_DEB) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST not found: set SANITYCHECK_DATA to a folder with its four .gz files (see datasets/fashion_mnist.md)"; \
	fi
	@# darknet's seven photos from Debian's package, unpacked (dpkg -x), not installed (datasets/photos.md)
	@d="$(DARKNET_DIR)"; if [ -f "$$d/scream.jpg" ] || [ -f /usr/share/darknet/data/scream.jpg ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then \
	  echo "fetching the photos of Debian's darknet package into $$d"; \
	  t=$$(mktemp -d) && (cd $$t && apt-get download -q darknet >/dev/null 2>&1) && dpkg -x $$t/darknet_*.deb $$t/x \
	    && mkdir -p "$$d" && cp $(DARKNET_PHOTOS:%=$$t/x/usr/share/darknet/data/%.jpg) $$t/x/usr/share/doc/darknet/copyright "$$d"/ \
	    || echo "could not fetch darknet's photos (try: sudo apt-get update); the photos suites need them (see datasets/photos.md)"; \
	  rm -rf $$t; \
	else \
	  echo "darknet photos not found: unpack Debian's darknet package and set SANITYCHECK_DARKNET (see datasets/photos.md)"; \
	fi

clean-runs:
	rm -rf runs
