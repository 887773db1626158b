# Tessera: `make demo` serves the demo archive; `make test` runs the whole test suite.
# Both first set up everything they need (Debian packages, a Python venv, npm packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := dcmtk chromium fonts-dejavu-core nginx-light ffmpeg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages python-packages web-packages postgres demo test bench lint

setup: system-packages python-packages web-packages

system-packages:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	[ -d /usr/share/fonts/truetype/dejavu ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

python-packages: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

web-packages: node_modules/.installed

# The test suite runs every archive test on PostgreSQL too. Use the server at
# TESSERA_TEST_POSTGRES_URL (default: root@127.0.0.1:5432, trust auth); start it if installed.
postgres:
	@$(BIN)/python -c "import sqlalchemy as s, os; s.create_engine(os.environ.get('TESSERA_TEST_POSTGRES_URL', 'postgresql+psycopg://root@127.0.0.1:5432/postgres')).connect()" 2>/dev/null \
	|| { for v in $$(ls /etc/postgresql 2>/dev/null); do $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$v main start || true; done; sleep 2; } \
	|| true

demo: setup
	$(BIN)/tessera demo

test: setup postgres
	$(BIN)/pytest -q

bench: setup postgres
	$(BIN)/python -m tests.bench

lint: python-packages
	$(BIN)/ruff check server modules tests sample_data
	$(BIN)/ruff format --check server modules tests sample_data
	$(BIN)/mypy
