# edged developer tasks. `make setup` then `make test` on a fresh Debian 12 / Python 3.11 box.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   := data
EDGED_CACHE ?= $(HOME)/.cache/edged
export EDGED_CACHE

.PHONY: setup test run bench lint clean deb

MOSQUITTO := $(EDGED_CACHE)/mosquitto/usr/sbin/mosquitto

setup: $(BIN)/edged $(DATA)/models/yolov3-tiny.onnx $(MOSQUITTO)

$(BIN)/edged: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# pnnx (ONNX -> NCNN converter binary) without its torch dependency, which it never uses.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps 'pnnx==20261020'
	touch $@

# The asset fetcher verifies checksums and reuses $(EDGED_CACHE): a second clone fetches nothing.
$(DATA)/models/yolov3-tiny.onnx: $(BIN)/edged edged/tools/assets.py edged/tools/darknet.py edged/tools/darknet_graph.py
	$(BIN)/python -m edged.tools.assets fetch $(DATA)
	$(BIN)/edged model import-darknet $(DATA)/models/yolov3-tiny/yolov3-tiny.cfg \
		$(DATA)/models/yolov3-tiny/yolov3-tiny.weights $@

# A real MQTT broker for the uplink tests: Debian's mosquitto and the two libraries it needs
# that a Debian 12 base lacks, unpacked into the cache and never installed (installing would
# start a system service). apt-get update runs only when the package lists are missing.
MOSQUITTO_DEBS := mosquitto libwrap0 libdlt2
$(MOSQUITTO):
	rm -rf $(EDGED_CACHE)/mosquitto.part && mkdir -p $(EDGED_CACHE)/mosquitto.part/debs
	cd $(EDGED_CACHE)/mosquitto.part/debs && { apt-get download -qq $(MOSQUITTO_DEBS) 2>/dev/null || \
		{ apt-get update -qq && apt-get download -qq $(MOSQUITTO_DEBS); }; } || \
		{ echo 'edged: setup: cannot download the Debian packages $(MOSQUITTO_DEBS)' >&2; exit 69; }
	for deb in $(EDGED_CACHE)/mosquitto.part/debs/*.deb; do \
		dpkg-deb -x $$deb $(EDGED_CACHE)/mosquitto.part/root || exit 1; done
	rm -rf $(EDGED_CACHE)/mosquitto && mv $(EDGED_CACHE)/mosquitto.part/root $(EDGED_CACHE)/mosquitto
	rm -rf $(EDGED_CACHE)/mosquitto.part

test:
	$(BIN)/pytest -m "not gpu and not tensorrt"

run:
	$(BIN)/edged run --config dev/edged.yaml

bench:
	mkdir -p bench/results
	$(BIN)/edged bench model --model $(DATA)/models/yolov3-tiny.onnx --sizes 416,320 \
		--threads 2 --image $(DATA)/media/bus.jpg --out bench/results/model-$$(hostname)-$$(date +%Y%m%d-%H%M%S).json

lint:
	$(BIN)/ruff check edged tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Debian package: dist/edged_<version>_<arch>.deb (and the wheel dist/edged-<version>-*.whl).
# packaging/build-deb.sh says how and why; it installs the Debian tools it lacks when run as root.
DEB_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1 | sed -E 's/^([0-9.]+)\.?(a|b|rc|dev)/\1~\2/')
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
DEB_FILE    := dist/edged_$(DEB_VERSION)_$(DEB_ARCH).deb

deb: $(DEB_FILE)

$(DEB_FILE): $(BIN)/edged $(DATA)/models/yolov3-tiny.onnx pyproject.toml README.md etc/edged/edged.yaml \
		$(shell find edged -name '*.py') $(wildcard packaging/* packaging/debian/* systemd/* docs/*.md)
	PIP=$(BIN)/pip packaging/build-deb.sh
