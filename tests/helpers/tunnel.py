"""Run the tunnel service (``lablink tunnel``) as a subprocess, as an admin would."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backend.procs import free_port
from tests.helpers import site
from tests.helpers.stack import end_process, launch


@dataclass
class TunnelService:
    directory: Path
    site: dict[str, Any]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more of its environment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def log(self) -> Path:
        return self.directory / "tunnel.log"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)

    def start(self, wait_healthy: bool = True, timeout: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        site_file = site.write(self.site, self.directory / "site.yaml")
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "LABLINK_TUNNEL_TOKEN": self.token,
            "LABLINK_TEST_HUB_TOKEN": secrets.token_urlsafe(24),
            **self.env,
        }
        argv = [sys.executable, "-m", "backend.cli", "tunnel", "--site", str(site_file),
                "--port", str(self.port), "--log-level", "debug"]  # fmt: skip

        def ready() -> bool:  # 503 while it restores its tunnels
            with self.client() as client:
                status = client.get("/health").status_code
            return status == 200 or (status == 503 and not wait_healthy)

        self.proc = launch(argv, env, self.log, ready, "the tunnel service", timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        return end_process(self.proc, sig, 20)

    def log_text(self, last: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-last:] if self.log.exists() else ""
