#!/usr/bin/env bash
# checkov (from PyPI, pinned below) over deploy/, offline, in a virtual environment of its
# own (.venv-checkov, reinstalled only when the pin changes). It fails on any failed check;
# the checks skipped, each with its reason, are in deploy/checkov.yaml and docs/deploy.md.
#   - Kubernetes: every overlay in deploy/kubernetes/overlays, rendered by
#     tests/deploy/kustomize.py (no kustomize binary here, and checkov's kustomize
#     framework needs one), scanned as plain manifests (--framework kubernetes).
#   - The Dockerfile (--framework dockerfile) and secrets in every file of deploy/.
#   - Compose: checkov has no framework for it; tests/deploy/test_compose.py checks
#     deploy/compose/compose.yaml against the Compose specification instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION=3.3.30
# Supported by that release (3.9 to 3.12); on the PATH, or installed by pyenv without being
# its active version.
pyenv_root="$(pyenv root 2>/dev/null || echo "${HOME}/.pyenv")"
python=""
for version in 3.12 3.11 3.10 3.9; do
  for candidate in "$(command -v "python${version}" || true)" \
      "${pyenv_root}"/versions/"${version}".*/bin/"python${version}"; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys' 2>/dev/null; then
      python="$candidate"
      break 2
    fi
  done
done
if [[ -z "$python" ]]; then
  echo "checkov: no python3.9 to 3.12 found" >&2
  exit 1
fi
venv=".venv-checkov"
stamp="$venv/.installed-stamp"
want="checkov==${CHECKOV_VERSION} $("$python" --version 2>&1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "checkov==${CHECKOV_VERSION}"
  echo "$want" >"$stamp"
fi

# Nothing leaves the machine: no API key, no policy download, no update check.
unset BC_API_KEY PRISMA_API_URL
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE
# A file checkov cannot parse fails the run rather than passing unchecked.
export CKV_PARSE_ERROR_FAIL=true
checkov=("$venv/bin/checkov" --config-file deploy/checkov.yaml)

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
PYTHONPATH=. "$venv/bin/python" - "$rendered" <<'PY'
import sys
from pathlib import Path

import yaml

from tests.deploy.kustomize import render

out = Path(sys.argv[1])
root = Path("deploy/kubernetes/overlays")
overlays = sorted(p.parent for p in root.glob("*/kustomization.yaml"))
assert overlays, "no overlay in deploy/kubernetes/overlays"
for overlay in overlays:
    resources = render(overlay)
    (out / f"{overlay.name}.yaml").write_text(yaml.safe_dump_all(resources, sort_keys=False))
    print(f"checkov: {overlay} rendered, {len(resources)} resources")
PY

echo "checkov $("${checkov[0]}" --version): Kubernetes (rendered overlays)"
status=0
"${checkov[@]}" --framework kubernetes --directory "$rendered" || status=1
echo "checkov: Dockerfile and secrets in deploy/"
"${checkov[@]}" --framework dockerfile secrets --directory deploy || status=1
exit "$status"
