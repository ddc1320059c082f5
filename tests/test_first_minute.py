"""What a new user meets first: the scripts' installs (and another apt process in the way),
and the operator's bare address.

The scripts run for real, with real apt-get, against an apt of their own: ``APT_CONFIG`` points
apt's root directory (``Dir``) at a temporary tree with no package sources, so its locks are
files in that tree and no package can ever be installed, whatever happens. The tests hold those
locks as apt does (an exclusive fcntl lock on the whole file, which ``fcntl.lockf`` takes) and
hide a needed command by giving the script a PATH of links to every command but that one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import Operator
from support import REPO


@dataclass
class Apt:
    """An apt of the test's own, and the environment that gives it to a script."""

    root: Path
    config: Path

    def lock(self, name: str) -> Path:
        return self.root / LOCKS[name]


LOCKS = {
    "dpkg frontend": "var/lib/dpkg/lock-frontend",
    "dpkg": "var/lib/dpkg/lock",
    "lists": "var/lib/apt/lists/lock",
}


@pytest.fixture
def apt(tmp_path: Path) -> Apt:
    root = tmp_path / "apt-root"
    for directory in (
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ):
        (root / directory).mkdir(parents=True)
    (root / "etc/apt/sources.list").write_text("")
    (root / "var/lib/dpkg/status").write_text("")
    config = tmp_path / "apt.conf"
    config.write_text(f'Dir "{root}/";\n')
    return Apt(root, config)


def command_links(directory: Path, hidden: set[str]) -> Path:
    """A directory of links to every command on PATH except ``hidden``."""
    directory.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if not entry or not Path(entry).is_dir():
            continue
        for command in Path(entry).iterdir():
            link = directory / command.name
            if command.name in hidden or link.exists() or not os.access(command, os.X_OK):
                continue
            link.symlink_to(command)
    return directory


def script_env(apt: Apt, path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDTOKEN_", "VIRTUAL_ENV"))}
    # SUDO empty: apt-get runs as the test's user, so that APT_CONFIG reaches it.
    return {**env, "PATH": str(path), "APT_CONFIG": str(apt.config), "SUDO": "", **extra}


@contextlib.contextmanager
def held(lock: Path) -> Iterator[Callable[[], None]]:
    """Hold ``lock`` as apt does; the context gives a function that lets it go early."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield lambda: fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"./scripts/{name}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


# What each script is made to miss, and the package that brings it.
MISSING = {"test": ("redis-cli", "redis-tools"), "bench": ("wrk", "wrk")}


@pytest.mark.parametrize("script", ["test", "bench"])
def test_check_lists_the_installs_and_why_and_installs_nothing(
    script: str, apt: Apt, tmp_path: Path
) -> None:
    command, package = MISSING[script]
    path = command_links(tmp_path / "bin", {command})
    done = run_script(script, script_env(apt, path), "--check")
    assert done.returncode == 1, done.stdout  # something is missing
    rows = re.findall(r"^  (\w+) +(\S+) +(present|missing) +(.+)$", done.stdout, re.M)
    assert rows, done.stdout
    assert all(why.strip() for _, _, _, why in rows)
    assert [(kind, state) for kind, name, state, _ in rows if name == package] == [
        ("apt", "missing")
    ]
    assert f"apt-get install --no-install-recommends {package}\n" in done.stdout
    assert "pip installs the project with its [test] extras" in done.stdout
    # apt never ran: it would have made its lock files.
    assert not any(apt.lock(name).exists() for name in LOCKS)
    # The README says the same for ./scripts/test.
    if script == "test":
        readme = (REPO / "README.md").read_text()
        for _, name, _, _ in rows:
            assert f"`{name}`" in readme, name


def test_run_needs_nothing_from_apt(apt: Apt, tmp_path: Path) -> None:
    path = command_links(tmp_path / "bin", {"apt-get"})
    done = run_script("run", script_env(apt, path), "--check")
    assert done.returncode == 0, done.stdout
    assert "./scripts/run installs no system package." in done.stdout
    assert "pip installs the project (pyproject.toml) into .venv." in done.stdout


@pytest.mark.parametrize(
    ("script", "lock"),
    [("test", "dpkg frontend"), ("test", "dpkg"), ("test", "lists"), ("bench", "dpkg frontend")],
)
def test_a_lock_held_past_the_timeout_is_explained(
    script: str, lock: str, apt: Apt, tmp_path: Path
) -> None:
    command, package = MISSING[script]
    path = command_links(tmp_path / "bin", {command})
    with held(apt.lock(lock)):
        done = run_script(script, script_env(apt, path, APT_LOCK_TIMEOUT="1"))
    out = done.stdout
    assert done.returncode == 1, out  # the script's own failure, not apt-get's 100
    assert f"./scripts/{script} could not install {package}: another apt process still held" in out
    assert f"Could not get lock {apt.lock(lock)}. It is held by process {os.getpid()}" in out
    assert "set APT_LOCK_TIMEOUT to wait longer" in out
    assert f"\n  {package}: " in out  # why it is needed
    assert f"\n  apt-get install --no-install-recommends {package}\n" in out
    assert f"then run ./scripts/{script} again" in out
    assert "== pytest" not in out


@pytest.mark.parametrize("lock", ["dpkg frontend", "lists"])
def test_the_script_waits_for_a_lock_and_goes_on_when_it_is_released(
    lock: str, apt: Apt, tmp_path: Path
) -> None:
    path = command_links(tmp_path / "bin", {"redis-cli"})
    env = script_env(apt, path, APT_LOCK_TIMEOUT="120")
    with (
        held(apt.lock(lock)) as release,
        subprocess.Popen(
            ["./scripts/test"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if "waiting for another apt process" in line:
                    break
            assert "waiting for another apt process" in seen[-1], "".join(seen)
            assert f"Could not get lock {apt.lock(lock)}" in seen[-1]
            release()
            rest, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
    out = "".join(seen) + rest
    # Past the lock, apt-get itself answers: this apt has no package sources.
    assert proc.returncode == 1, out
    assert "./scripts/test could not install redis-tools: apt-get failed: " in out
    assert "E: Unable to locate package redis-tools" in out
    assert "still held" not in out
    assert "\n  apt-get install --no-install-recommends redis-tools\n" in out


def test_a_bad_timeout_is_refused_before_apt_runs(apt: Apt, tmp_path: Path) -> None:
    path = command_links(tmp_path / "bin", {"redis-cli"})
    done = run_script("test", script_env(apt, path, APT_LOCK_TIMEOUT="5m"))
    assert done.returncode == 1, done.stdout
    assert "APT_LOCK_TIMEOUT must be a number of seconds, not '5m'" in done.stdout
    assert not any(apt.lock(name).exists() for name in LOCKS)


@pytest.mark.parametrize(
    ("hidden", "sudo", "reason"),
    [
        (set(), "no-such-sudo", "installing them needs root, and 'no-such-sudo' is not available"),
        ({"apt-get"}, "", "apt-get is not available here: install them with this system's"),
    ],
)
def test_without_a_usable_apt_get_the_script_says_what_to_do(
    hidden: set[str], sudo: str, reason: str, apt: Apt, tmp_path: Path
) -> None:
    path = command_links(tmp_path / "bin", {"redis-cli", *hidden})
    done = run_script("test", {**script_env(apt, path), "SUDO": sudo})
    assert done.returncode == 1, done.stdout
    assert f"./scripts/test could not install redis-tools: {reason}" in done.stdout
    assert "redis-tools: the Sentinel and Cluster tests" in done.stdout
    assert "apt-get install --no-install-recommends redis-tools\n" in done.stdout
    assert not any(apt.lock(name).exists() for name in LOCKS)


# ----------------------------------------------------------------------------- GET /
async def test_the_bare_address_points_at_discovery_and_the_docs(operator: Operator) -> None:
    resp = await operator.http.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    issuer = operator.settings.issuer
    assert body["issuer"] == issuer
    assert body["openid_configuration"] == f"{issuer}/.well-known/openid-configuration"
    assert body["openapi"] == f"{issuer}/openapi.json"
    assert "docs/" in body["documentation"]
    # Each address it names answers.
    disco = await operator.http.get(urlsplit(body["openid_configuration"]).path)
    assert disco.status_code == 200 and disco.json()["issuer"] == issuer
    assert (await operator.http.get(urlsplit(body["openapi"]).path)).json()["openapi"]
    head = await operator.http.head("/")
    assert head.status_code == 200 and head.content == b""
    # Without [demo], there is no demo to lead to.
    assert (await operator.http.get("/demo/")).status_code == 404
