"""AWS center inventory benchmark: listing an EC2 region through the driver.

    benchmarks/aws_scan.py --instances 2000 --page-size 1000 --json

Starts moto's EC2 server (``moto_server``, its own process) on 127.0.0.1, seeds
``--instances`` instances (100 per reservation), and lists them with the AWS driver.
Prints ``inventory_s`` (wall time, median of 3, moto's XML rendering included),
``inventory_cpu_s`` (CPU of the broker's process alone: botocore parsing and the
driver's mapping), ``requests`` (DescribeInstances pages; moto counts ``MaxResults`` in
reservations, EC2 in instances) and ``per_instance_ms``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3

from _cloud import emit
from deskbroker import outbound
from deskbroker.centers.aws.driver import AwsCenter
from deskbroker.centers.registry import open_driver
from deskbroker.outbound import OutboundPolicy

REGION = "eu-west-1"
KEYS = {"access_key_id": "AKIDBENCH", "secret_access_key": "bench-secret-not-real"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    # The simulator listens on loopback, which the default policy denies.
    outbound.install(OutboundPolicy.from_text("127.0.0.0/8", outbound.DEFAULT_DENY))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # until moto listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ec2 = boto3.client(
            "ec2",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=KEYS["access_key_id"],
            aws_secret_access_key=KEYS["secret_access_key"],
        )
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        left = args.instances
        while left > 0:
            batch = min(100, left)
            ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=batch, MaxCount=batch)
            left -= batch
        driver = open_driver(
            "aws",
            {"region": REGION, "endpoint_url": url, "page_size": args.page_size},
            KEYS,
        )
        assert isinstance(driver, AwsCenter)
        walls: list[float] = []
        cpus: list[float] = []
        for _ in range(3):
            before = driver.session.requests
            wall, cpu = time.perf_counter(), time.process_time()
            machines = driver.inventory()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            requests = driver.session.requests - before
            assert len(machines) == args.instances, len(machines)
    finally:
        server.terminate()
        server.wait(10)
    wall_s = statistics.median(walls)
    emit(
        {
            "instances": args.instances,
            "page_size": args.page_size,
            "inventory_s": round(wall_s, 3),
            "inventory_cpu_s": round(statistics.median(cpus), 3),
            "requests": requests,
            "per_instance_ms": round(wall_s * 1000 / max(1, args.instances), 3),
        },
        args.json,
        "AWS inventory",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
