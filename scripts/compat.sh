#!/usr/bin/env bash
# Import every module and run the unit tests (no servers) under the newest Python this
# machine has, in a virtual environment of its own: the README promises 3.11 to 3.13.
set -euo pipefail
cd "$(dirname "$0")/.."
# On the PATH, or installed by pyenv without being its active version.
pyenv_root="$(pyenv root 2>/dev/null || echo "${HOME}/.pyenv")"
python=""
for version in 3.14 3.13 3.12 3.11; do
  for candidate in "$(command -v "python${version}" || true)" \
      "${pyenv_root}"/versions/"${version}".*/bin/"python${version}"; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys' 2>/dev/null; then
      python="$candidate"
      break 2
    fi
  done
done
if [[ -z "$python" ]]; then
  echo "compat: no python3.11 or newer found" >&2
  exit 1
fi
venv=".venv-compat"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test]"
echo "compat: $("$venv/bin/python" --version)"
"$venv/bin/python" - <<'PY'
import importlib
import pkgutil

packages = ["schemas", "clickstream", "batches", "producers", "stream_app", "consumers", "deploy"]
imported = 0
for name in packages:
    package = importlib.import_module(name)
    imported += 1
    for module in pkgutil.walk_packages(package.__path__, f"{name}."):
        importlib.import_module(module.name)
        imported += 1
print(f"compat: {imported} modules imported")
PY
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/schemas tests/batches/test_public.py tests/stream_app/test_release_cuts.py \
  tests/stream_app/test_call_watchdog.py
