"""The gateway's API: connection reports, authenticated by the gateway's own credential
(an HMAC of the body under a key derived from the shared gateway key), not by a token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import APIKeyHeader

from deskbroker.api.deps import Ctx
from deskbroker.services import gateway

_REPORT_SCHEMA = gateway.GatewayReport.model_json_schema()
# Documents the gateway's credential in the OpenAPI document; checked by the service.
_SIGNATURE = APIKeyHeader(
    name=gateway.SIGNATURE_HEADER,
    scheme_name="GatewaySignature",
    description="t=<unix time>,sig=<base64url HMAC-SHA256 of '<t>.<body>'> under the "
    "gateway report key (docs/gateway.md)",
    auto_error=False,
)


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/gateway/reports",
        tags=["gateway"],
        status_code=204,
        summary="A gateway reports a connection it opened or closed",
        description="Bytes each way and the duration of one connection the gateway carried, "
        "appended to the desktop's events as `gateway.open` / `gateway.close`. The body is "
        f"signed: header `{gateway.SIGNATURE_HEADER}: t=<unix time>,sig=<base64url "
        "HMAC-SHA256 of '<t>.<body>'>` under the gateway report key (docs/gateway.md).",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _REPORT_SCHEMA}},
            }
        },
    )
    async def report(
        request: Request, ctx: Ctx, signature: Annotated[str | None, Depends(_SIGNATURE)]
    ) -> Response:
        body = await request.body()
        await _off_loop(ctx, signature or "", body)
        return Response(status_code=204)

    return r


async def _off_loop(ctx: Ctx, header: str, body: bytes) -> None:
    # The database write is blocking: run it on the thread pool like the sync routes.
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(gateway.record_report, ctx, header, body)
