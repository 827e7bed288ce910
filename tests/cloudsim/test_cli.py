"""The ``cloudsim openstack`` command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import warnings

import openstack
import pytest

from cloudsim.cli import build_parser


def test_parser_reads_quota_and_timings() -> None:
    args = build_parser().parse_args(
        [
            "openstack",
            "--port",
            "0",
            "--projects",
            "a,b@Lab",
            "--quota",
            "instances=3,floating_ips=2",
            "--timings",
            "build=2.5",
            "--backing",
            "xvnc",
        ]
    )
    assert args.quota == {"instances": 3.0, "floating_ips": 2.0}
    assert args.timings == {"build": 2.5}
    assert args.backing == "xvnc"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["openstack", "--quota", "instances"])


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudsim.cli",
            "openstack",
            "--port",
            "0",
            "--projects",
            "demo,other",
            "--quota",
            "instances=3",
            "--clock-speed",
            "50",
            "--seed-servers",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["auth_url"].endswith("/identity/v3")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn = openstack.connection.Connection(
                auth_url=info["auth_url"],
                username="demo",
                password="password",
                project_name="demo",
                user_domain_name="Default",
                project_domain_name="Default",
                region_name="RegionOne",
            )
            assert len(list(conn.compute.servers())) == 4
            limits = conn.compute.get("/limits").json()["limits"]["absolute"]
        assert limits["maxTotalInstances"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
