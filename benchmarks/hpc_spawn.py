"""Time a spawn to a lab that answers, per system of the embedded site.

    make bench-hpc ARGS="--runs 5"

Runs `lablink up` with the embedded site (its own ports and state directory),
logs in as a person would, and for each kind of lab — a local process, a
batch job through the UNICORE development site on Slurm, a job on the login
node, a batch job through slurmrestd (kind ``slurm``) — starts it through the
hub's REST API, waits until /user/<name>/lab answers 200 through the proxy, and
stops it. The development site and slurmrestd use the one-node Slurm cluster of
`make slurm-up`; `make bench-hpc` starts it. The last line is machine-readable:
``local_p50_s=… hpc_batch_p50_s=… hpc_login_p50_s=… slurm_batch_p50_s=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.embedded import SLURM_DIR, local_slurmrestd, slurm_conf  # noqa: E402
from tests.helpers.hub import HubUser  # noqa: E402
from tests.helpers.stack import Stack  # noqa: E402

KINDS = {
    "local": {"system": "local"},
    "hpc_batch": {"system": "hpc", "partition": "batch", "runtime": "20"},
    "hpc_login": {"system": "hpc", "partition": "login"},
    "slurm_batch": {"system": "cluster", "partition": "batch", "runtime": "20"},
}


async def measure(stack: Stack, password: str, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with HubUser(stack.url, "demo", password) as demo:
        await demo.login()
        for _ in range(runs):
            for kind, options in KINDS.items():  # interleaved: drift hits every kind alike
                began = time.monotonic()
                resp = await demo.start(options=options)
                if resp.status_code not in (201, 202):
                    raise RuntimeError(f"{kind}: start answered {resp.status_code}: {resp.text}")
                await demo.wait_lab(timeout=120)
                times[kind].append(time.monotonic() - began)
                await demo.stop()
                await demo.wait_stopped()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="spawns per kind of lab (5)")
    args = parser.parse_args(argv)
    conf = slurm_conf()
    if conf is None or local_slurmrestd() is None:
        print(
            f"no Slurm cluster with slurmrestd answers (run `make slurm-up`; {SLURM_DIR})",
            file=sys.stderr,
        )
        return 2
    password = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="lablink-bench-hpc-") as tmp:
        stack = Stack(Path(tmp) / "state", password, ["demo"], extra_env={"SLURM_CONF": conf})
        stack.start()
        try:
            times = asyncio.run(measure(stack, password, args.runs))
        finally:
            stack.stop()
    print(f"spawn to /lab 200 through the proxy, {args.runs} runs each (seconds):")
    for kind, values in times.items():
        print(
            f"  {kind:10} median {statistics.median(values):.2f}  min {min(values):.2f}  "
            f"max {max(values):.2f}"
        )
    print(" ".join(f"{k}_p50_s={statistics.median(v):.2f}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
