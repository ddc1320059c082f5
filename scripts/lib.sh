# Shared by scripts/run, scripts/test and scripts/bench: what a script needs from the system,
# and a project virtualenv kept in .venv.
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

SCRIPT="./scripts/$(basename "$0")"

# ------------------------------------------------------------------------- system packages
# need KIND PACKAGE PROBE WHY: one thing the script needs, one line each. PACKAGE is what gets
# installed, PROBE the command whose presence means it is there already (sbin directories are
# searched too), WHY is printed by --check. KIND says who installs it: install_KIND PACKAGE...
# installs, command_KIND PACKAGE... prints the command a user would run instead (apt and npm
# below); present_KIND PROBE, where a kind has it, replaces the command check (npm).
NEED_KIND=()
NEED_PACKAGE=()
NEED_PROBE=()
NEED_WHY=()
need() {
  NEED_KIND+=("$1")
  NEED_PACKAGE+=("$2")
  NEED_PROBE+=("$3")
  NEED_WHY+=("$4")
}

have() { PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

# present I: whether need number I is there already. A kind with a present_KIND function checks
# its PROBE that way (npm below); for the others PROBE is a command.
present() {
  if declare -F "present_${NEED_KIND[$1]}" >/dev/null; then
    "present_${NEED_KIND[$1]}" "${NEED_PROBE[$1]}"
  else
    have "${NEED_PROBE[$1]}"
  fi
}

# prepare EXTRAS [--check]: with --check, print what the script needs and whether it is there,
# install nothing, and exit (status 1 when something is missing). Otherwise install the
# missing packages, then the virtualenv with the project's EXTRAS.
prepare() {
  local extras="$1"
  if [ "${2:-}" = "--check" ]; then
    print_needs "$extras"
    exit $?
  fi
  local kind i packages
  for kind in $(printf '%s\n' "${NEED_KIND[@]}" | sort -u); do
    packages=()
    for i in "${!NEED_KIND[@]}"; do
      if [ "${NEED_KIND[$i]}" = "$kind" ] && ! present "$i"; then
        packages+=("${NEED_PACKAGE[$i]}")
      fi
    done
    if [ "${#packages[@]}" -gt 0 ]; then
      if ! declare -F "install_$kind" >/dev/null; then
        echo "$SCRIPT: scripts/lib.sh has no install_$kind for ${packages[*]}" >&2
        exit 1
      fi
      "install_$kind" "${packages[@]}"
    fi
  done
  ensure_venv "$extras"
}

print_needs() {
  local extras="$1" i state missing=()
  if [ "${#NEED_KIND[@]}" -eq 0 ]; then
    echo "$SCRIPT installs no system package."
  else
    echo "$SCRIPT needs these, and installs the missing ones:"
    for i in "${!NEED_KIND[@]}"; do
      state=present
      present "$i" || { state=missing; missing+=("$i"); }
      printf '  %-4s %-13s %-8s %s\n' "${NEED_KIND[$i]}" "${NEED_PACKAGE[$i]}" "$state" "${NEED_WHY[$i]}"
    done
    if printf '%s\n' "${NEED_KIND[@]}" | grep -qx apt; then
      echo "apt-get runs as root (or through sudo); apt-get update only when apt's lists lack a package."
    fi
    if printf '%s\n' "${NEED_KIND[@]}" | grep -qx npm; then
      if node_ok; then
        echo "npm uses node $(node --version) and npm $(npm --version) from the machine."
      else
        echo "npm needs $NODE_HINT, which is missing."
      fi
    fi
  fi
  local py
  if py=$(pick_python 2>/dev/null); then
    echo "It needs $py ($("$py" -c 'import sys; print(sys.version.split()[0])')) and makes .venv with it."
  else
    echo "It needs Python 3.11 or newer, which is missing (Debian: apt-get install python3 python3-venv)."
  fi
  echo "pip installs the project${extras:+ with its [$extras] extras} (pyproject.toml) into .venv."
  [ "${#missing[@]}" -gt 0 ] || return 0
  local kind packages
  for kind in $(for i in "${missing[@]}"; do echo "${NEED_KIND[$i]}"; done | sort -u); do
    packages=()
    for i in "${missing[@]}"; do
      if [ "${NEED_KIND[$i]}" = "$kind" ]; then packages+=("${NEED_PACKAGE[$i]}"); fi
    done
    if declare -F "command_$kind" >/dev/null; then
      echo "To install the missing ones yourself: $("command_$kind" "${packages[@]}")"
    else
      echo "Missing ($kind): ${packages[*]}"
    fi
  done
  return 1
}

# ------------------------------------------------------------------------------------ apt
# Another apt process (an unattended upgrade, a second terminal) may hold apt's locks: wait for
# them up to APT_LOCK_TIMEOUT seconds (default 300). SUDO is the command that runs apt-get when
# not root (default sudo; set but empty, apt-get runs as the current user).
# What apt-get says when another process holds a lock (not when this user may not take it).
APT_LOCKED='It is held by process|Resource temporarily unavailable|is another process using it'

apt_sudo() {
  if [ -n "${SUDO+set}" ]; then
    echo "$SUDO"
  elif [ "$(id -u)" -ne 0 ]; then
    echo sudo
  fi
}

# command_apt PACKAGE...: the command that installs them, as a user would type it.
command_apt() {
  local sudo
  sudo=$(apt_sudo)
  echo "${sudo:+$sudo }apt-get install --no-install-recommends $*"
}

# install_apt PACKAGE...: install Debian packages; apt-get update only when the current lists
# cannot provide them. On failure, say what is missing and what to run, and exit.
install_apt() {
  local timeout="${APT_LOCK_TIMEOUT:-300}" sudo
  sudo=$(apt_sudo)
  case "$timeout" in '' | *[!0-9]*) apt_failed "APT_LOCK_TIMEOUT must be a number of seconds, not '$timeout'" "$@" ;; esac
  have apt-get || apt_failed "apt-get is not available here: install them with this system's package manager (the names are Debian's)" "$@"
  if [ -n "$sudo" ] && ! have "${sudo%% *}"; then
    apt_failed "installing them needs root, and '${sudo%% *}' is not available: run $SCRIPT as root, or set SUDO" "$@"
  fi
  echo "$SCRIPT: installing $* with apt-get (another apt process's locks are waited for up to ${timeout}s)" >&2
  APT_DEADLINE=$(($(date +%s) + timeout))
  APT_LOG=$(mktemp)
  if ! apt_get install --no-install-recommends "$@"; then
    if apt_locked || ! apt_get update || ! apt_get install --no-install-recommends "$@"; then
      if apt_locked; then
        apt_failed "another apt process still held a lock after ${timeout}s ($(apt_lock_line)); wait for it to finish, or set APT_LOCK_TIMEOUT to wait longer" "$@"
      fi
      apt_failed "apt-get failed: $(grep -E '^(E|W): ' "$APT_LOG" | tr '\n' ' ' | sed 's/ $//')" "$@"
    fi
  fi
  rm -f "$APT_LOG"
}

# apt_get ARG...: apt-get ARG..., again while another process holds a lock and the deadline has
# not passed. apt-get waits for the dpkg lock itself; it does not for the lists' lock.
apt_get() {
  local patience=0 told=""
  while :; do
    # shellcheck disable=SC2046 # SUDO may be a command with arguments
    if $(apt_sudo) env LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get -q -y \
      -o DPkg::Lock::Timeout="$patience" "$@" >"$APT_LOG" 2>&1; then
      return 0
    fi
    apt_locked || return 1
    patience=$((APT_DEADLINE - $(date +%s)))
    [ "$patience" -gt 0 ] || return 1
    if [ -z "$told" ]; then
      echo "$SCRIPT: waiting for another apt process (up to ${patience}s): $(apt_lock_line)" >&2
      told=1
    fi
    sleep 1
  done
}

apt_locked() { grep -qE "$APT_LOCKED" "$APT_LOG"; }

# apt_lock_line: apt-get's words for the lock and who holds it.
apt_lock_line() {
  { grep -E "^(E: |Waiting for cache lock: )?Could not get lock" "$APT_LOG" || grep -E "$APT_LOCKED" "$APT_LOG"; } |
    head -n 1 | sed -e 's/^E: //' -e 's/^Waiting for cache lock: //' -e 's/[.]*$//'
}

# apt_failed REASON PACKAGE...: say what is missing, why, and what to run; exit 1.
apt_failed() {
  local reason="$1" package i
  shift
  [ -z "${APT_LOG:-}" ] || rm -f "$APT_LOG"
  {
    echo "$SCRIPT could not install $*: $reason."
    echo "What they are for:"
    for package in "$@"; do
      for i in "${!NEED_PACKAGE[@]}"; do
        [ "${NEED_PACKAGE[$i]}" != "$package" ] || echo "  $package: ${NEED_WHY[$i]}"
      done
    done
    echo "Install them yourself, then run $SCRIPT again:"
    echo "  $(command_apt "$@")"
  } >&2
  exit 1
}

# ------------------------------------------------------------------------------------ npm
# need npm DIR DIR WHY: the Node packages of DIR (relative to the repository), exactly as its
# package-lock.json pins them (npm ci; npm install where there is no lock). Node.js and npm come
# from the machine: they are named, not installed.
NODE_MIN=20
NODE_HINT="Node.js $NODE_MIN or newer with npm (Debian: apt-get install nodejs npm)"

node_ok() {
  have node && have npm &&
    node -e "process.exit(Number(process.versions.node.split('.')[0]) < $NODE_MIN ? 1 : 0)"
}

# present_npm DIR: DIR's node_modules was installed after its package.json and lock last changed.
present_npm() {
  local installed="$1/node_modules/.package-lock.json" file
  node_ok && [ -f "$installed" ] || return 1
  for file in "$1/package.json" "$1/package-lock.json"; do
    [ ! -e "$file" ] || [ "$installed" -nt "$file" ] || return 1
  done
}

# npm_how DIR: ci where DIR has a package-lock.json, else install.
npm_how() { if [ -f "$1/package-lock.json" ]; then echo ci; else echo install; fi; }

# command_npm DIR...: the commands that install them, as a user would type them.
command_npm() {
  local dir out="" sep=""
  for dir in "$@"; do
    out+="$sep(cd $dir && npm $(npm_how "$dir"))"
    sep="; "
  done
  echo "$out"
}

install_npm() {
  local dir
  if ! node_ok; then
    echo "$SCRIPT needs $NODE_HINT for: $*. Install it, then run $SCRIPT again." >&2
    exit 1
  fi
  for dir in "$@"; do
    echo "$SCRIPT: installing the Node packages of $dir ($(command_npm "$dir"))" >&2
    if ! (cd "$dir" && npm "$(npm_how .)" --no-audit --no-fund) >&2; then
      echo "$SCRIPT could not install the Node packages of $dir; see npm's message above, then run: $(command_npm "$dir")" >&2
      exit 1
    fi
  done
}

# ------------------------------------------------------------------------------ virtualenv
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
