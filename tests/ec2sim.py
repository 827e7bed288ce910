"""moto's EC2 server on 127.0.0.1, behind a small gate that adds what moto lacks.

moto answers the EC2 API faithfully but has no account limits and pages exactly as
asked. The gate sits at the outer boundary (between the driver and moto, as a load
balancer would) and adds two behaviours of the real service: an instance limit that
RunInstances answers with EC2's own ``InstanceLimitExceeded`` error, and pages smaller
than ``MaxResults`` asked for (with a ``NextToken``), as EC2 may give. It counts the
calls by action, so tests can see how many pages a listing took.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import boto3
from moto.server import ThreadedMotoServer

REGION = "eu-west-1"
KEYS = {"access_key_id": "AKIDTESTONLY", "secret_access_key": "test-secret-not-real"}

_LIMIT_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
    "<Code>InstanceLimitExceeded</Code><Message>You have requested more instances (1) "
    "than your current instance limit of {limit} allows for the specified instance type."
    "</Message></Error></Errors><RequestID>gate-0001</RequestID></Response>"
)


class Ec2Sim:
    """moto's server plus the gate; ``url`` is the gate's, what a center is given."""

    def __init__(self) -> None:
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.instance_limit: int | None = None
        self.max_page: int | None = None
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.moto_url = ""
        self._base_ami = ""
        self.url = ""

    def start(self) -> Ec2Sim:
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, host, port))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.moto.stop()

    def reset(self) -> None:
        """Forget every resource and behaviour (moto's own reset API)."""
        conn = http.client.HTTPConnection(*self.moto.get_host_and_port(), timeout=10)
        conn.request("POST", "/moto-api/reset")
        conn.getresponse().read()
        conn.close()
        self.instance_limit = None
        self.max_page = None
        with self._lock:
            self.calls.clear()

    def client(self) -> Any:
        """A boto3 client straight to moto: the test's own hands on the cloud."""
        return boto3.client(
            "ec2",
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id=KEYS["access_key_id"],
            aws_secret_access_key=KEYS["secret_access_key"],
        )

    def live(self) -> list[dict[str, Any]]:
        """Instances not terminated (nor on their way there)."""
        pages = self.client().get_paginator("describe_instances").paginate()
        return [
            i
            for page in pages
            for r in page["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")
        ]

    def base_ami(self) -> str:
        """One of moto's public AMIs (listing them is slow: asked once)."""
        if not self._base_ami:
            images = self.client().describe_images(Owners=["amazon"])["Images"]
            self._base_ami = str(images[0]["ImageId"])
        return self._base_ami

    def image(self, name: str = "desktop-image") -> str:
        """An AMI of the account's own (``Owners=self``), made from one of moto's."""
        ami: str = self.client().register_image(
            Name=name,
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}],
            Architecture="x86_64",
        )["ImageId"]
        return ami

    def seed(self, count: int, **tags: str) -> list[str]:
        """``count`` instances made by someone else (one reservation each)."""
        ec2 = self.client()
        base = self.base_ami()
        ids: list[str] = []
        for n in range(count):
            pairs = [{"Key": "Name", "Value": f"seed-{n:03d}"}]
            pairs += [{"Key": k, "Value": v} for k, v in tags.items()]
            answer = ec2.run_instances(
                ImageId=base,
                InstanceType="t3.micro",
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance", "Tags": pairs}],
            )
            ids.append(answer["Instances"][0]["InstanceId"])
        return ids

    def _count(self, action: str) -> None:
        with self._lock:
            self.calls[action] += 1


def _handler(sim: Ec2Sim, host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Gate(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
            action = form.get("Action", "")
            sim._count(action)
            limit = sim.instance_limit
            if action == "RunInstances" and limit is not None and len(sim.live()) >= limit:
                self._answer(400, _LIMIT_ERROR.format(limit=limit).encode())
                return
            if action == "DescribeInstances" and sim.max_page and "MaxResults" in form:
                form["MaxResults"] = str(min(int(form["MaxResults"]), sim.max_page))
                body = urlencode(form).encode()
            upstream = http.client.HTTPConnection(host, port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
            upstream.request("POST", self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            self._answer(answer.status, answer.read())
            upstream.close()

        def _answer(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Gate
