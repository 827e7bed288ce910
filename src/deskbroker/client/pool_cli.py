"""``deskbroker pool``: a pool's rollout onto a new image through the admin API
(``/api/v1/admin/pools/{id}/rollout``), with the token ``deskbroker config`` uses: an API
token in ``DESKBROKER_TOKEN`` for scripts, else the one ``deskbroker login`` keeps."""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from deskbroker.client.config_cli import ConfigError, Token, Url, _endpoint

pool_app = typer.Typer(no_args_is_help=True, help="Pools: roll them onto a new image")
console = Console()
err = Console(stderr=True)

PoolName = Annotated[str, typer.Argument(help="The pool, by name or id")]


def _request(method: str, path: str, url: str | None, token: str | None, body: Any = None) -> Any:
    base, bearer = _endpoint(url, token)
    try:
        response = httpx.request(
            method,
            f"{base}/api/v1/admin/{path}",
            json=body,
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise ConfigError(f"the broker at {base} did not answer ({exc})") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        detail = answer.get("detail") if isinstance(answer, dict) else None
        raise ConfigError(detail or f"the broker answered HTTP {response.status_code}")
    return answer


def _pool_id(pool: str, url: str | None, token: str | None) -> str:
    """A pool named by name (or id): its id, or a ConfigError saying there is none."""
    named = _request("GET", f"pools?{httpx.QueryParams(name=pool)}", url, token)
    for item in named.get("items", []):
        return str(item["id"])
    _request("GET", f"pools/{pool}", url, token)  # an id, or "pool ... does not exist"
    return pool


def _show(answer: dict[str, Any]) -> None:
    # The sentence of a paused or finished rollout already starts with its state.
    summary = str(answer["summary"])
    state = str(answer["state"])
    line = summary if summary.startswith(f"{state}: ") else f"{state}: {summary}"
    console.print(line, highlight=False)
    if answer.get("image"):
        console.print(
            f"image {answer['image']} (before: {answer['previous_image'] or 'unknown'})",
            highlight=False,
        )
    for failure in answer.get("failures", []):
        console.print(f"[red]{failure['name']}: {failure['message']}[/]", highlight=False)
    if answer.get("last_error"):
        console.print(f"[yellow]last error: {answer['last_error']}[/]", highlight=False)


def _run(method: str, pool: str, tail: str, url: str | None, token: str | None, body: Any) -> None:
    try:
        pool_id = _pool_id(pool, url, token)
        _show(_request(method, f"pools/{pool_id}/rollout{tail}", url, token, body))
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc


@pool_app.command("rollout")
def rollout_command(
    pool: PoolName,
    image: Annotated[str, typer.Argument(help="The new image (or snapshot), by name or id")],
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Also rebuild persistent desktops")
    ] = False,
    batch: Annotated[int, typer.Option(help="Rebuilds under way at once", min=1)] = 5,
    url: Url = None,
    token: Token = None,
) -> None:
    """Roll POOL onto IMAGE: free desktops first, held ones once their users left."""
    body = {"image": image, "include_persistent": persistent, "batch_size": batch}
    _run("POST", pool, "", url, token, body)


@pool_app.command("status")
def status_command(
    pool: PoolName,
    watch: Annotated[float, typer.Option(help="Print again every N seconds (0: once)")] = 0,
    url: Url = None,
    token: Token = None,
) -> None:
    """POOL's rollout in numbers and words."""
    while True:
        _run("GET", pool, "", url, token, None)
        if watch <= 0:
            return
        time.sleep(watch)


@pool_app.command("pause")
def pause_command(pool: PoolName, url: Url = None, token: Token = None) -> None:
    """No new rebuilds in POOL's rollout; those under way finish."""
    _run("POST", pool, "/pause", url, token, {})


@pool_app.command("resume")
def resume_command(pool: PoolName, url: Url = None, token: Token = None) -> None:
    """Resume POOL's paused rollout (failed rebuilds are tried again)."""
    _run("POST", pool, "/resume", url, token, {})


@pool_app.command("roll-back")
def roll_back_command(pool: PoolName, url: Url = None, token: Token = None) -> None:
    """Aim POOL's rollout at the image the pool had before it."""
    _run("POST", pool, "/roll-back", url, token, {})
