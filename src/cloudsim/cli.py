"""Command line: ``cloudsim openstack --port 8774 --projects demo,other ...``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from cloudsim.server import CloudSim


def _pairs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=value, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="cloudsim", description="Simulated clouds.")
    sub = parser.add_subparsers(dest="command", required=True)
    os_parser = sub.add_parser("openstack", help="serve a simulated OpenStack cloud")
    os_parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    os_parser.add_argument("--port", type=int, default=0, help="API port (0 = any free)")
    os_parser.add_argument(
        "--projects",
        default="demo",
        help="comma-separated project names (name or name@domain); each "
        "gets a same-named user with password 'password'",
    )
    os_parser.add_argument(
        "--quota",
        type=_pairs,
        default={},
        help="default quota, e.g. instances=10,cores=40,floatingip=5",
    )
    os_parser.add_argument(
        "--backing",
        choices=["none", "xvnc"],
        default="none",
        help="xvnc: a real Xvnc desktop per ACTIVE instance",
    )
    os_parser.add_argument(
        "--clock-speed", type=float, default=1.0, help="simulated seconds per real second"
    )
    os_parser.add_argument(
        "--timings",
        type=_pairs,
        default={},
        help="simulated seconds per operation, e.g. build=2,stop=1",
    )
    os_parser.add_argument(
        "--token-ttl", type=float, default=3600.0, help="token lifetime in seconds"
    )
    os_parser.add_argument("--metadata-host", default="127.0.0.1")
    os_parser.add_argument(
        "--metadata-port",
        type=int,
        default=0,
        help="metadata service port (0 = any free, -1 = disabled)",
    )
    os_parser.add_argument("--availability-zones", default="nova")
    os_parser.add_argument(
        "--vnc-password", default=None, help="use VncAuth with this password instead of no security"
    )
    os_parser.add_argument(
        "--seed-servers",
        type=int,
        default=0,
        help="create this many ACTIVE servers in the first project",
    )
    os_parser.add_argument(
        "--max-limit",
        type=int,
        default=None,
        help="cap every list page at this many items, with a next link (Nova's max_limit)",
    )
    os_parser.add_argument(
        "--max-microversion", default="2.100", help="newest compute microversion (e.g. 2.60)"
    )
    os_parser.add_argument(
        "--ignore-filters",
        action="store_true",
        help="answer lists with everything, ignoring filters such as tags or port_id",
    )
    os_parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudsim`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    projects = [p for p in (s.strip() for s in args.projects.split(",")) if p]
    sim = CloudSim(
        host=args.host,
        port=args.port,
        projects=projects,
        quota={k: int(v) for k, v in args.quota.items()},
        clock_speed=args.clock_speed,
        backing=args.backing,
        timings=args.timings,
        token_ttl=args.token_ttl,
        metadata_host=args.metadata_host,
        metadata_port=None if args.metadata_port < 0 else args.metadata_port,
        availability_zones=[z for z in args.availability_zones.split(",") if z],
        vnc_password=args.vnc_password,
        max_limit=args.max_limit,
        max_microversion=args.max_microversion,
        ignore_filters=args.ignore_filters,
    )
    sim.start()
    if args.seed_servers:
        sim.seed_servers(args.seed_servers, project=projects[0] if projects else "demo")
    info = {
        "url": sim.url,
        "auth_url": sim.auth_url,
        "metadata_url": sim.info()["metadata_url"],
        "control_url": f"{sim.url}/_sim",
        "projects": projects,
        "password": "password",
        "region": sim.config.region,
    }
    print(json.dumps(info, indent=2), flush=True)
    print(sim.clouds_yaml(project=projects[0] if projects else "demo"), flush=True)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        done.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
