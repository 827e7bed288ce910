"""The connection to one AWS region through boto3, with whole-call deadlines.

botocore bounds each socket read and retries throttling and 5xx answers itself, but
nothing bounds a whole call: an endpoint that drips its answer would hold the caller for
ever. So every call runs on one of the process's capped helper threads for cloud calls
(the OpenStack driver's ``overdue.CLOUD_CALLS``) and the caller waits at most the
center's ``timeout_s``, botocore's retries included.

Every connection the client opens is checked against the outbound policy on the address
its socket reached, before a byte is sent: an ``endpoint_url`` naming a host that later
resolves to a denied address is refused like a Keystone URL is.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import boto3
import botocore.awsrequest
import botocore.exceptions
from botocore.config import Config

from deskbroker import outbound
from deskbroker.centers.aws.params import AwsParams
from deskbroker.centers.openstack.overdue import CLOUD_CALLS, NoHelperLeft, Overdue
from deskbroker.errors import CenterError, unanswered
from deskbroker.outbound import OutboundRefused

log = logging.getLogger(__name__)


class AwsFailure(CenterError):
    """An EC2 call failed; ``code`` is AWS's error code when it gave one."""

    def __init__(self, detail: str, code: str = "") -> None:
        super().__init__(detail)
        self.code = code


class _GuardedHTTPConnection(botocore.awsrequest.AWSHTTPConnection):  # type: ignore[misc]  # botocore has no type hints
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()
        outbound.current().check_socket(sock, f"connecting to {self.host}:{self.port}")
        return sock


class _GuardedHTTPSConnection(botocore.awsrequest.AWSHTTPSConnection):  # type: ignore[misc]  # botocore has no type hints
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()
        outbound.current().check_socket(sock, f"connecting to {self.host}:{self.port}")
        return sock


class _GuardedHTTPPool(botocore.awsrequest.AWSHTTPConnectionPool):  # type: ignore[misc]  # botocore has no type hints
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(botocore.awsrequest.AWSHTTPSConnectionPool):  # type: ignore[misc]  # botocore has no type hints
    ConnectionCls = _GuardedHTTPSConnection


def _guard(client: Any) -> None:
    """Swap the client's connection pools for checked ones. botocore keeps them in one
    dict per HTTP session, shared by its direct and proxy managers; without that dict
    (another botocore) the client is refused rather than left unchecked."""
    http = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools = getattr(http, "_pool_classes_by_scheme", None)
    if not isinstance(pools, dict):
        raise AwsFailure("this botocore version cannot be held to the outbound policy")
    pools["http"] = _GuardedHTTPPool
    pools["https"] = _GuardedHTTPSPool


def _said(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    """AWS's error code and message, one line, short."""
    error = exc.response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = " ".join(str(error.get("Message") or "").split())[:200]
    return code, message


class Ec2Session:
    """One boto3 EC2 client for a center, made on first use and shared by its callers
    (boto3 clients are thread-safe; making one is not, hence the lock)."""

    def __init__(self, params: AwsParams, secrets: Mapping[str, str]) -> None:
        self.params = params
        self._secrets = dict(secrets)
        self._client: Any = None
        self._lock = threading.Lock()
        self.requests = 0
        # The tenant whose calls left hanging count against its share of helpers.
        self.owner = ""

    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        key = self._secrets.get("access_key_id", "")
        secret = self._secrets.get("secret_access_key", "")
        if not key or not secret:
            raise AwsFailure("the center needs its access_key_id and secret_access_key secrets")
        p = self.params
        # A session of its own: the default one reads the broker host's profiles and
        # environment, which are the operator's credentials, not this center's.
        session = boto3.session.Session(
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=self._secrets.get("session_token") or None,
            region_name=p.region,
        )
        config = Config(
            connect_timeout=min(p.timeout_s, 10.0),
            read_timeout=p.timeout_s,
            retries={"total_max_attempts": p.retries + 1, "mode": "standard"},
            user_agent_extra="deskbroker",
        )
        client = session.client("ec2", endpoint_url=p.endpoint_url, config=config)
        _guard(client)
        return client

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One EC2 operation by its API name (``DescribeInstances``), within the center's
        ``timeout_s``; an error is an ``AwsFailure`` carrying AWS's code, never its
        request id or our credentials."""
        deadline = time.monotonic() + self.params.timeout_s
        client = self.client()
        method = getattr(client, _snake(operation))
        self.requests += 1

        def work() -> dict[str, Any]:
            answer: dict[str, Any] = method(**kwargs)
            return answer

        try:
            answer: dict[str, Any] = self._bounded(work, deadline, operation)
            return answer
        except OutboundRefused as exc:
            raise AwsFailure(f"{operation}: {exc.detail}") from exc
        except botocore.exceptions.ClientError as exc:
            code, message = _said(exc)
            if code in ("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId"):
                raise AwsFailure(
                    f"{operation}: AWS refused the center's credentials ({code}): check the "
                    "access key and its IAM policy",
                    code,
                ) from exc
            raise AwsFailure(f"{operation}: {message or 'refused'} ({code})", code) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise AwsFailure("the center's AWS credentials are missing") from exc
        except (
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ) as exc:
            # No answer in time: the next call would likely wait as long.
            raise unanswered(AwsFailure(f"{operation}: AWS is unreachable: {_where(exc)}")) from exc
        except botocore.exceptions.EndpointConnectionError as exc:
            raise AwsFailure(f"{operation}: AWS is unreachable: {_where(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            cause = (getattr(exc, "kwargs", None) or {}).get("error")
            if isinstance(cause, OutboundRefused):  # botocore wraps what a socket raised
                raise AwsFailure(f"{operation}: {cause.detail}") from exc
            # Its text may quote a URL or the remote's answer: log it, name the kind.
            log.warning("%s: %s", operation, exc)
            raise AwsFailure(f"{operation}: the call failed ({type(exc).__name__})") from exc

    def _bounded(self, work: Callable[[], dict[str, Any]], deadline: float, what: str) -> Any:
        try:
            return CLOUD_CALLS.run(
                work, deadline - time.monotonic(), f"aws-{what}", owner=self.owner
            )
        except Overdue:
            raise unanswered(
                AwsFailure(f"{what}: AWS did not answer within {self.params.timeout_s:g} s")
            ) from None
        except NoHelperLeft as exc:
            raise AwsFailure(
                f"{what}: not asked, since {exc}; the broker waits for them to end first"
            ) from None

    def pages(self, operation: str, key: str, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        """Every page of a listing, following ``NextToken`` to the end whatever size the
        endpoint gives pages: a short page proves nothing, only a missing token does."""
        seen: set[str] = set()
        query = dict(kwargs)
        while True:
            answer = self.call(operation, **query)
            yield list(answer.get(key) or [])
            token = answer.get("NextToken")
            if not token:
                return
            if token in seen:
                raise AwsFailure(f"{operation}: the endpoint's paging went round in a circle")
            seen.add(str(token))
            query["NextToken"] = token


def _snake(operation: str) -> str:
    """``DescribeInstances`` → ``describe_instances``."""
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


def _where(exc: botocore.exceptions.BotoCoreError) -> str:
    kwargs: dict[str, Any] = getattr(exc, "kwargs", {}) or {}
    return str(kwargs.get("endpoint_url") or type(exc).__name__)
