"""What a Prometheus scrape of the backend costs with many active labs.

    make bench-metrics ARGS="--labs 1000 --scrapes 30"

A backend (in this process, on a fresh PostgreSQL database, or on SQLite with
``--database sqlite``) holds ``--labs`` active labs spread over three systems,
five VOs and the states a lab is active in. Each scrape reads the labs'
figures from the database afresh (the 5-second cache of backend/metrics.py is
off) and renders the exposition. The direct path measured in the same run, the
scrapes and its requests taking turns: an admin's ``GET /api/v1/labs?active=true``,
which reads the same rows. Both go through the app's ASGI interface (no socket),
so the figures are the backend's own work.

The labs are rows only (owned by this backend, so it follows none of them): the
bench measures reading and rendering, not labs.

The last line is machine-readable (``key=value`` pairs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.app import create_app
from backend.db import events, labs, utcnow
from backend.settings import Settings, parse_settings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEMS = ("alpha", "beta", "gamma")
VOS = ("climate", "physics", "biology", "teaching", "industry")
STATES = ("running",) * 6 + ("queued", "starting", "submitted", "stopping")


def site(state: Path, database_url: str) -> Settings:
    local = {"kind": "local", "command": ["true"], "allow_root": True}
    document = {
        "state_dir": str(state),
        "database_url": database_url,
        "login": "demo",
        "tokens": [{"name": "admin", "secret_env": "BENCH_ADMIN_TOKEN", "role": "admin"}],
        "default_system": SYSTEMS[0],
        "systems": {name: dict(local, display_name=name.title()) for name in SYSTEMS},
        "vos": {name: {"members": {"users": ["*"]}, "quota": {"labs": 1000}} for name in VOS},
    }
    return parse_settings(json.dumps(document), "bench site")


async def fill(app: Any, count: int) -> None:
    """``count`` active labs owned by this backend's replica, with an event each."""
    store = app.state.store
    owner = store.replica_id
    now = utcnow()
    rows, firsts = [], []
    for i in range(count):
        lab_id = str(uuid.uuid4())
        rows.append(
            {
                "id": lab_id,
                "user_name": f"u{i:05d}",
                "server_name": "",
                "system": SYSTEMS[i % len(SYSTEMS)],
                "vo": VOS[i % len(VOS)],
                "options": {"system": SYSTEMS[i % len(SYSTEMS)]},
                "state": STATES[i % len(STATES)],
                "last_seq": 1,
                "url": None,
                "handle": {"pid": 100000 + i, "port": 20000 + i},
                "message": "bench",
                "created": now - timedelta(seconds=i),
                "updated": now,
                "owner": owner,
            }
        )
        firsts.append(
            {"lab_id": lab_id, "seq": 1, "time": now, "progress": 5, "state": "accepted",
             "message": "bench", "detail": ""}
        )  # fmt: skip
    async with store.engine.begin() as conn:
        await conn.execute(insert(labs), rows)
        await conn.execute(insert(events), firsts)


async def measure(database: str, count: int, scrapes: int) -> dict[str, Any]:
    env = {"BENCH_ADMIN_TOKEN": secrets.token_urlsafe(24),
           "LABLINK_METRICS_TOKEN": secrets.token_urlsafe(24),
           "LABLINK_STATE_KEY": secrets.token_hex(32)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lablink-bench-metrics-") as tmp:
        name = ""
        if database == "postgresql":
            name = f"lablink_bench_{uuid.uuid4().hex[:10]}"
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'CREATE DATABASE "{name}"')
            await admin.close()
            url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        else:
            url = f"sqlite+aiosqlite:///{tmp}/backend.sqlite"
        try:
            app = create_app(site(Path(tmp) / "state", url), env)
            async with app.router.lifespan_context(app):
                await fill(app, count)
                app.state.metrics.refresh_every = 0.0
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                    scrape_h = {"Authorization": f"Bearer {env['LABLINK_METRICS_TOKEN']}"}
                    list_h = {"Authorization": f"Bearer {env['BENCH_ADMIN_TOKEN']}"}
                    took: dict[str, list[float]] = {"scrape": [], "list": []}
                    body = b""
                    for i in range(scrapes + 1):  # one uncounted warm-up of each
                        began = time.perf_counter()
                        resp = await client.get("/metrics", headers=scrape_h)
                        scrape_s = time.perf_counter() - began
                        assert resp.status_code == 200, resp.text
                        body = resp.content
                        began = time.perf_counter()
                        listed = await client.get("/api/v1/labs?active=true", headers=list_h)
                        list_s = time.perf_counter() - began
                        assert listed.status_code == 200 and len(listed.json()) == count
                        if i:
                            took["scrape"].append(scrape_s)
                            took["list"].append(list_s)
        finally:
            if name:
                admin = await asyncpg.connect(PG_ADMIN)
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
    families = list(text_string_to_metric_families(body.decode()))
    running = sum(
        s.value
        for f in families
        if f.name == "lablink_labs"
        for s in f.samples
        if s.labels.get("state") == "running"
    )
    scrape_ms = statistics.median(took["scrape"]) * 1000
    list_ms = statistics.median(took["list"]) * 1000
    return {
        "database": database,
        "labs": count,
        "running": int(running),
        "scrape_median_ms": round(scrape_ms, 1),
        "scrape_p90_ms": round(sorted(took["scrape"])[int(0.9 * scrapes) - 1] * 1000, 1),
        "list_median_ms": round(list_ms, 1),
        "ratio": round(scrape_ms / list_ms, 3),
        "bytes": len(body),
        "series": sum(len(f.samples) for f in families),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--database", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    chosen = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    results = []
    for database in chosen:
        got = asyncio.run(measure(database, args.labs, args.scrapes))
        results.append(got)
        print(
            f"{database}: {got['labs']} active labs ({got['running']} running): scrape "
            f"median {got['scrape_median_ms']} ms (p90 {got['scrape_p90_ms']} ms), "
            f"{got['bytes']} bytes, {got['series']} series; the admin's list of active labs "
            f"median {got['list_median_ms']} ms; ratio {got['ratio']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(" ".join(f"{r['database']}_{k}={v}" for r in results for k, v in r.items()
                   if k != "database"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
