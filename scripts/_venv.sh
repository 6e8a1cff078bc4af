# Sourced by scripts/*: makes .venv (Python 3.11+) and installs the project into it when
# pyproject.toml changed since the last install. Usage: ensure_venv "" | ensure_venv "[test]"
ensure_venv() {
  local extras="$1" py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "moose_daemon needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
      exit 1
    fi
    "$py" -m venv .venv
  fi
  local stamp=".venv/.installed${extras}"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    echo "$want" > "$stamp"
  fi
}
