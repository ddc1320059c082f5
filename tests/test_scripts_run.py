"""`./scripts/run` on a fresh clone serves the demo: what a newcomer does first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support import REPO, free_port


@pytest.mark.slow
def test_scripts_run_on_a_fresh_clone_serves_the_demo(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    port = free_port()
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDTOKEN_", "VIRTUAL_ENV"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["./scripts/run"],
            cwd=clone,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # creates a virtualenv and installs the project
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"{base}/demo/", timeout=1).status_code
                if status == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert status == 200, log.read_text(errors="replace")[-3000:]
        assert httpx.get(f"{base}/demo/phone", timeout=5).status_code == 200
        # The bare address, the first one a newcomer tries, leads to the demo.
        bare = httpx.get(f"{base}/", timeout=5)
        assert bare.status_code == 302 and bare.headers["location"] == "/demo/"
        disco = httpx.get(f"{base}/.well-known/openid-configuration", timeout=5).json()
        assert disco["issuer"] == base
        printed = log.read_text(errors="replace")
        assert f"{base}/demo/phone" in printed and f"{base}/demo/" in printed
        assert (clone / "var" / "demo.toml").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
