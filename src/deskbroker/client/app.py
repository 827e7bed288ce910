"""``deskbroker connect``: the user's CLI. Log in, list desktops, connect, release.

It speaks only the broker's HTTP API (``client/broker.py``); the broker's URL lives in
the config file, the token in a cache readable by the user alone.
"""

from __future__ import annotations

import sys
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from deskbroker.client import viewers
from deskbroker.client.broker import Broker, Starting
from deskbroker.client.config import (
    ClientConfig,
    ClientError,
    config_file,
    launch_dir,
    load_config,
    save_config,
)
from deskbroker.client.login import (
    LoginFailed,
    StoredToken,
    default_token_file,
    device_login,
    forget_token,
    load_token,
    store_token,
)

connect_app = typer.Typer(
    no_args_is_help=True,
    help="Your desktops: log in, list them, connect to one, give one back.",
)
console = Console(highlight=False)

UrlOption = Annotated[
    str | None, typer.Option("--url", help="The broker's URL (saved in the config file)")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{message}[/]")
    return typer.Exit(code)


def _signed_in(url: str | None = None) -> tuple[ClientConfig, StoredToken]:
    config = load_config()
    token = load_token(default_token_file())
    if token is None:
        raise ClientError("you are not signed in; run `deskbroker connect login`")
    wanted = (url or config.url or token.url).rstrip("/")
    if token.url.rstrip("/") != wanted:
        raise ClientError(
            f"you are signed in at {token.url}, not {wanted}; run `deskbroker connect login`"
        )
    if token.expires_at <= time.time():
        raise ClientError("your sign-in has expired; run `deskbroker connect login`")
    return config, token


def _print_offers(offers: list[dict[str, Any]]) -> None:
    for offer in offers:
        if offer.get("status") == "assigned" and offer.get("desktop"):
            console.print(f"  [green]✓[/] {offer['message']}")
        else:
            console.print(f"  [yellow]…[/] {offer.get('message', offer.get('status'))}")


@connect_app.command()
def login(
    url: UrlOption = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your user name")] = None,
    tenant: Annotated[str | None, typer.Option(help="Your organisation (tenant)")] = None,
    source: Annotated[str | None, typer.Option(help="Identity source name")] = None,
    oidc: Annotated[
        str | None, typer.Option(help="Sign in at this OpenID Connect source in a browser")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Sign in; the broker hands out your desktops (or a place in the queue)."""
    try:
        config = load_config()
        broker_url = url or config.url
        if not broker_url:
            raise _fail("which broker? give --url https://broker.example (it is remembered)", 2)
        config = config.updated(url=broker_url, tenant=tenant, source=source)
        if oidc:
            stored = device_login(broker_url, oidc, tenant=config.tenant, console=console)
            offers: list[dict[str, Any]] = []
        else:
            name = user or typer.prompt("user name")
            if password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = typer.prompt("password", hide_input=True)
            with Broker(broker_url) as broker:
                answer = broker.login(name, password, config.tenant, config.source)
                if answer.get("status") == "second_factor_needed":
                    if answer.get("enrol"):
                        raise ClientError(
                            "your account needs an authenticator app first: sign in once "
                            "in the portal to add it"
                        )
                    code = typer.prompt("one-time code")
                    answer = broker.login_code(str(answer["challenge"]), code.strip())
            stored = StoredToken(
                broker_url.rstrip("/"),
                str(answer["token"]),
                int(answer["expires_at"]),
                str(answer["username"]),
            )
            offers = list(answer.get("offers") or [])
    except (ClientError, LoginFailed) as exc:
        raise _fail(f"sign-in failed: {exc}") from exc
    store_token(default_token_file(), stored)
    save_config(config)
    console.print(f"signed in at {stored.url} as [bold]{stored.username}[/]")
    _print_offers(offers)


@connect_app.command()
def logout() -> None:
    """Sign out everywhere and forget the cached token."""
    token = load_token(default_token_file())
    if token is not None:
        try:
            with Broker(token.url, token.token) as broker:
                broker.logout()
        except ClientError as exc:
            console.print(f"[yellow]the broker was not told: {exc}[/]")
    forget_token(default_token_file())
    console.print("signed out")


@connect_app.command("list")
def list_desktops(url: UrlOption = None) -> None:
    """Your desktops with their state, and your places in queues."""
    try:
        _, token = _signed_in(url)
        with Broker(token.url, token.token) as broker:
            mine = broker.desktops()
    except ClientError as exc:
        raise _fail(str(exc)) from exc
    table = Table("desktop", "state", "address", "id")
    for desktop in mine.get("desktops", []):
        table.add_row(desktop["name"], desktop["power_state"], desktop["address"], desktop["id"])
    if table.rows:
        console.print(table)
    else:
        console.print("you hold no desktop")
    for place in mine.get("queue", []):
        console.print(f"[yellow]queued:[/] {place['message']}")


def _pick(mine: dict[str, Any], wanted: str | None) -> dict[str, Any] | None:
    held = list(mine.get("desktops", []))
    if wanted is not None:
        for desktop in held:
            if wanted in (desktop["name"], desktop["id"]):
                return dict(desktop)
        return None
    if len(held) > 1:
        names = ", ".join(d["name"] for d in held)
        raise ClientError(f"you hold several desktops ({names}); name the one to open")
    return dict(held[0]) if held else None


def _wait_for_desktop(
    broker: Broker, wanted: str | None, poll_s: float, deadline: float
) -> dict[str, Any]:
    """The desktop to open; while the user only has a queue place, wait for it."""
    shown = ""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        # Piped or logged, the plain lines printed on each change tell the story.
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("looking for your desktop", total=None)
        while True:
            mine = broker.desktops()
            desktop = _pick(mine, wanted)
            if desktop is not None:
                if shown:
                    console.print(f"[green]your turn:[/] {desktop['name']} is yours")
                return desktop
            queue = mine.get("queue", [])
            if not queue:
                if wanted is not None:
                    raise ClientError(f"you hold no desktop called {wanted!r}")
                raise ClientError(
                    "you hold no desktop and wait in no queue; run `deskbroker connect login`"
                )
            message = "; ".join(str(q["message"]) for q in queue)
            if message != shown:
                console.print(f"[yellow]queued:[/] {message}")
                shown = message
            progress.update(task, description=f"waiting in the queue: {message}")
            if time.monotonic() + poll_s > deadline:
                raise ClientError("still queued; run the command again to keep waiting")
            time.sleep(poll_s)


def _descriptor(
    broker: Broker, desktop: dict[str, Any], protocol: str | None, deadline: float
) -> dict[str, Any]:
    """The connection, once the desktop runs: a starting desktop shows its progress."""
    accepts = viewers.available()
    shown = ""
    started = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        # Piped or logged, the plain lines printed on each change tell the story.
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(f"connecting to {desktop['name']}", total=None)
        while True:
            answer = broker.connect(desktop["id"], protocol, accepts)
            if not isinstance(answer, Starting):
                return answer
            if answer.message != shown:
                console.print(f"[cyan]starting:[/] {answer.message}")
                shown = answer.message
            elapsed = time.monotonic() - started
            progress.update(
                task,
                description=f"{answer.desktop_name} is starting",
                total=elapsed + answer.estimate_s,
                completed=elapsed,
            )
            if time.monotonic() + answer.retry_after_s > deadline:
                raise ClientError(
                    f"{answer.desktop_name} is still starting; run the command again shortly"
                )
            time.sleep(answer.retry_after_s)


def _launch(
    config: ClientConfig, broker_url: str, descriptor: dict[str, Any], file_only: bool
) -> None:
    name = descriptor.get("desktop_name") or descriptor.get("host")
    # The gateway's page may be given relative to the broker (same origin as the portal).
    launch_url = (
        urljoin(broker_url + "/", str(descriptor["launch_url"]))
        if descriptor.get("launch_url")
        else None
    )
    if launch_url:
        console.print(f"{name} opens in your browser: {launch_url}")
        if not file_only:
            webbrowser.open(launch_url)
        return
    if str(descriptor.get("protocol", "")).startswith("html5-"):
        raise _fail(f"{name} is offered in the browser only: open the portal at {broker_url}")
    file = viewers.write_launch_file(descriptor, launch_dir(config))
    found = None if file_only else viewers.find(str(descriptor["protocol"]))
    if found is None:
        what = "" if file_only else f"no {descriptor['protocol']} viewer found on PATH; "
        console.print(f"{what}launch file for {name}: {file}")
        console.print(f"address: {descriptor['uri']}")
        return
    viewer, program = found
    console.print(f"opening {name} ({descriptor['protocol']}) with {viewer.program}")
    status = viewers.launch(viewer, program, descriptor, file)
    if status:
        raise typer.Exit(status)


@connect_app.command("open")
def open_desktop(
    desktop: Annotated[
        str | None, typer.Argument(help="Name or id (needed when you hold several)")
    ] = None,
    protocol: Annotated[
        str | None, typer.Option("--protocol", "-p", help="rdp, vnc, ssh... (default: the plan's)")
    ] = None,
    file_only: Annotated[
        bool, typer.Option("--file-only", help="Write the launch file, start no viewer")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a queue or a starting desktop")
    ] = 900.0,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue")] = 5.0,
    url: UrlOption = None,
) -> None:
    """Connect: start the desktop if it is off, wait in the queue if you must, then
    launch xfreerdp, remmina, vncviewer or ssh (or write the launch file)."""
    deadline = time.monotonic() + timeout
    try:
        config, token = _signed_in(url)
        with Broker(token.url, token.token) as broker:
            chosen = _wait_for_desktop(broker, desktop, max(0.1, poll), deadline)
            descriptor = _descriptor(broker, chosen, protocol, deadline)
    except ClientError as exc:
        raise _fail(str(exc)) from exc
    _launch(config, token.url, descriptor, file_only)


@connect_app.command()
def release(
    desktop: Annotated[str, typer.Argument(help="Name or id of the desktop to give back")],
    url: UrlOption = None,
) -> None:
    """Give a desktop back (the next user in its queue gets it)."""
    try:
        _, token = _signed_in(url)
        with Broker(token.url, token.token) as broker:
            found = _pick(broker.desktops(), desktop)
            if found is None:
                raise ClientError(f"you hold no desktop called {desktop!r}")
            broker.release(found["id"])
    except ClientError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"released {found['name']}")


@connect_app.command("config")
def configure(
    url: UrlOption = None,
    tenant: Annotated[str | None, typer.Option(help="Your organisation (tenant)")] = None,
    source: Annotated[str | None, typer.Option(help="Identity source name")] = None,
    download_dir: Annotated[
        Path | None, typer.Option(help="Where launch files are written")
    ] = None,
) -> None:
    """Show the configuration, or change it."""
    try:
        config = load_config().updated(
            url=url,
            tenant=tenant,
            source=source,
            download_dir=str(download_dir) if download_dir else None,
        )
    except ClientError as exc:
        raise _fail(str(exc), 2) from exc
    if any(v is not None for v in (url, tenant, source, download_dir)):
        save_config(config)
    console.print(f"configuration: {config_file()}")
    for key, value in config.__dict__.items():
        console.print(f"  {key} = {value if value is not None else '(not set)'}")
