# Shared by scripts/run, scripts/test and scripts/bench: a project virtualenv kept in .venv.
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "Python 3.11 or newer is required" >&2
  return 1
}

# ensure_venv EXTRAS: create .venv and (re)install the project when pyproject.toml changed.
ensure_venv() {
  local extras="$1" root py stamp want
  root=$(repo_root)
  py=$(pick_python)
  if [ ! -x "$root/.venv/bin/python" ]; then
    "$py" -m venv "$root/.venv"
  fi
  stamp="$root/.venv/.installed"
  want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $extras"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$root/.venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    local spec="$root"
    [ -z "$extras" ] || spec="$root[$extras]"
    "$root/.venv/bin/python" -m pip install --quiet -e "$spec" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$root/.venv/bin/python" -c "import idtoken" # fail here if the install did not work
    echo "$want" >"$stamp"
  fi
}

# apt_install PACKAGE...: install Debian packages that are missing (root or sudo).
apt_install() {
  [ "$#" -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing system packages: $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
