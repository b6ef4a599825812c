# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment (.venv) on first use and install the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job, offline, on the trained miniature world (--preset mini): the guided mesh and, with --compare,
# the unguided one on the same seed beside it, a contact sheet of both, manifests, what the critic saw and r.
# The example (picture, description, seed, run settings) is defined once: vlm3d_ttg/miniworld/example.py.
demo: $(STAMP)
	export HF_HUB_OFFLINE=1; eval "$(VENV)/bin/vlm3d-ttg generate $$($(PY) -m vlm3d_ttg.miniworld.example)" \
		--preset mini --compare --save-views $(OUT)/views --plot --out $(OUT)/demo.glb

# The suite on every core (pytest-xdist): one worker per core, each test file whole in one worker so that its
# module fixtures are built once (--dist loadfile; tests/conftest.py keeps the files sharing the app server
# together and gives each worker its share of torch's threads). Past 8 workers the longest files set the time
# and each worker builds the tiny models again. `pytest -n 0` (or plain `pytest`) runs it in one process.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --maxprocesses 8 --dist loadfile

clean:
	rm -rf $(OUT) .pytest_cache
