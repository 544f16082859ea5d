# The two commands a newcomer needs:  make demo   and   make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# resnet18 (the product default) needs its published weights: hub cache, WEIGHTS=FILE or a download.
ARCH   ?= resnet18
WEIGHTS ?=

.PHONY: demo test test-unit setup system-deps build serve stop clean

demo: setup
	@$(MAKE) --no-print-directory stop >/dev/null 2>&1 || true
	@if ./build_mar.sh --arch $(ARCH) $(if $(WEIGHTS),--weights $(WEIGHTS)); then model=$(ARCH)-embed; \
	 else echo "make demo: falling back to efficientnet_lite0, whose weights ship with a package" >&2; \
	      ./build_mar.sh --arch efficientnet_lite0 && model=efficientnet_lite0-embed; fi; \
	 ./serve.sh --model $$model && \
	 $(PY) client/rank.py --images_folder images --ref_image cat.png --model $$model && \
	 echo "TorchServe keeps serving $$model at $$(sed -n 's/^inference_address=//p' config/config.properties)" \
	      "(key in ./key_file.json); 'make stop' stops it" >&2

test: setup
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# The fast half: no server, no database, no browser (seconds to a few minutes).
test-unit: setup
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

setup: system-deps $(VENV)/.installed

# Then the project itself, editable: client, devtools and imgsim import from the checkout
# (setuptools comes with torch, so no build environment is fetched).
$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Java runs TorchServe's frontend; Chromium renders the HTML reports in the tests.
system-deps:
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	@test -d /usr/share/openclipart/png || { apt-get update -qq && apt-get install -y -qq openclipart-png; }
	@# nginx: the edge proxies and the load balancer of deploy/local/ (envsubst renders their config)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx; }
	@command -v envsubst >/dev/null || { apt-get update -qq && apt-get install -y -qq gettext-base; }

build: setup
	./build_mar.sh --arch $(ARCH) $(if $(WEIGHTS),--weights $(WEIGHTS))

serve: setup
	./serve.sh --model $(ARCH)-embed

stop:
	torchserve --stop

clean:
	rm -rf model_store/*.mar logs key_file.json
