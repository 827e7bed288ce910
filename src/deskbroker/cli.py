"""The ``deskbroker`` command line."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from deskbroker import __version__
from deskbroker.client.app import connect_app
from deskbroker.client.config_cli import config_app
from deskbroker.client.pool_cli import pool_app
from deskbroker.config import Settings

app = typer.Typer(no_args_is_help=True, help="deskbroker: a vendor-neutral VDI connection broker")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
user_app = typer.Typer(no_args_is_help=True, help="Local users")
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(connect_app, name="connect")
app.add_typer(config_app, name="config")
app.add_typer(pool_app, name="pool")
console = Console()


def _settings(data_dir: Path | None, database_url: str | None) -> Settings:
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.effective_secret_key  # noqa: B018 - a weak key is refused here, in words
    except ValidationError as exc:
        console.print(f"[bold red]bad configuration:[/] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from exc
    except ValueError as exc:
        console.print(f"[bold red]bad configuration:[/] {exc}")
        raise typer.Exit(2) from exc
    return settings


DataDir = Annotated[Path | None, typer.Option(help="Data directory (default ./.deskbroker)")]
DbUrl = Annotated[
    str | None, typer.Option("--db", help="Database URL (default SQLite in the data dir)")
]


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"deskbroker {__version__}")


Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="HTTP worker processes behind the one socket (default: the cores, up to 4, "
        "on PostgreSQL; SQLite serves one)",
    ),
]
MAX_DEFAULT_WORKERS = 4
WORKER_HEALTHCHECK_S = 60


def http_workers(settings: Settings, asked: int | None) -> int:
    """How many HTTP workers this node runs; ValueError in words when it cannot."""
    sqlite = settings.effective_database_url.startswith("sqlite")
    count = asked if asked is not None else settings.http_workers
    if count is None:
        return 1 if sqlite else max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))
    if count < 1:
        raise ValueError(f"--workers must be at least 1, not {count}")
    if sqlite and count > 1:
        raise ValueError(
            f"SQLite has one writer at a time, so a broker on it runs one HTTP worker, not "
            f"{count}: drop --workers (or DESKBROKER_HTTP_WORKERS), or move to PostgreSQL "
            "(--db postgresql+psycopg://...) to use more cores"
        )
    return count


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
    workers: Workers = None,
) -> None:
    """Run the broker node: REST API, portal and background work.

    With several workers, each is a process of its own behind one socket; the engine
    and the node's heartbeat run once, in this process."""
    settings = _settings(data_dir, db)
    try:
        count = http_workers(settings, workers)
    except ValueError as exc:
        console.print(f"[bold red]cannot serve:[/] {exc}")
        raise typer.Exit(2) from exc
    if count > 1:
        # Before the metrics are first imported, here and in the workers (see metrics).
        _multiprocess_metrics(settings.data_dir / "metrics" / settings.broker_id)

    import uvicorn

    from deskbroker.api.app import create_app
    from deskbroker.api.worker import NODE_PID_VARIABLE
    from deskbroker.bootstrap import ensure_defaults
    from deskbroker.engine.nodes import NodeHeartbeat
    from deskbroker.engine.runner import Engine
    from deskbroker.services.context import BrokerContext

    ctx = BrokerContext.from_settings(settings)
    ensure_defaults(ctx)
    engine = Engine(ctx) if settings.engine else None
    node = NodeHeartbeat(ctx, engine.owner if engine else new_node_id(settings), http_workers=count)
    node.start()
    if engine is not None:
        engine.start()
    host = host or settings.host
    port = port or settings.port
    console.print(
        f"[bold]deskbroker[/] node {node.node_id} on http://{host}:{port} "
        f"({count} HTTP worker{'s' if count > 1 else ''})"
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "access_log": False,
        # X-Forwarded-For is read by the app, from the proxies of trusted_proxies only
        # (uvicorn's own default trusts any caller on 127.0.0.1).
        "proxy_headers": False,
        # Longer than clients and load balancers keep idle connections (60 s is common):
        # uvicorn's 5 s closed connections a client was about to reuse, and the client
        # saw its request dropped unanswered.
        "timeout_keep_alive": settings.keep_alive_s,
        # uvicorn's default waits for ever: one request stuck on a silent client held a
        # stopping node, and its service manager had to kill it.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    try:
        if count == 1:
            uvicorn.run(create_app(ctx), **options)
        else:
            # The workers are fresh interpreters: they read the settings from the
            # environment, so the command line's overrides go there.
            os.environ["DESKBROKER_DATA_DIR"] = str(settings.data_dir)
            os.environ["DESKBROKER_DATABASE_URL"] = settings.effective_database_url
            os.environ[NODE_PID_VARIABLE] = str(os.getpid())
            uvicorn.run(
                "deskbroker.api.worker:app",
                factory=True,
                workers=count,
                # A worker imports and builds the app (seconds of CPU, more on a busy
                # machine) before it can answer the supervisor's ping: uvicorn's 5 s
                # killed slow starters and started them again, for ever.
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                **options,
            )
    finally:
        if engine is not None:
            engine.stop(wait=False)
        node.stop()


def _multiprocess_metrics(folder: Path) -> None:
    """Every process of the node writes its metrics under ``folder`` (emptied first:
    figures of an earlier run are not this run's), so /metrics answers for the node."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def new_node_id(settings: Settings) -> str:
    """A node id for a node without an engine (it holds no leases)."""
    import uuid

    return f"{settings.broker_id}:{uuid.uuid4().hex[:8]}"


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = None,
    db: DbUrl = None,
    contract: Annotated[
        bool,
        typer.Option(
            "--contract",
            help="also apply contract migrations (they remove what older nodes use): "
            "refused while a node of another version runs",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="with --contract: do not check the running nodes")
    ] = False,
) -> None:
    """Bring the database schema up to date; safe while nodes of the previous version run.

    Expand migrations (they only add) are applied; contract migrations wait for
    --contract, once every node runs this version."""
    from deskbroker.bootstrap import ensure_defaults
    from deskbroker.errors import Conflict
    from deskbroker.services import schema
    from deskbroker.services.context import BrokerContext

    ctx = BrokerContext.from_settings(_settings(data_dir, db))
    todo = schema.plan(ctx)
    try:
        with console.status("migrating"):
            outcome = schema.upgrade(ctx, contract=contract, force=force)
            ensure_defaults(ctx)
    except Conflict as exc:
        console.print(f"[bold red]not upgraded:[/] {exc.detail}")
        raise typer.Exit(1) from exc
    if outcome.ahead:
        console.print(
            f"the schema ({outcome.revision}) is newer than this version knows: left as it is"
        )
        return
    done = [r for r in (*todo.expand, *todo.contract) if r not in outcome.contract_pending]
    console.print(
        f"schema at revision [bold]{outcome.revision}[/]; applied: {', '.join(done) or 'nothing'}"
    )
    if outcome.contract_pending:
        console.print(
            "contract migrations waiting: "
            + ", ".join(outcome.contract_pending)
            + ". Run `deskbroker db upgrade --contract` once every node runs this version."
        )


@db_app.command("reseal")
def db_reseal(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Seal every stored secret again under the current DESKBROKER_SECRET_KEY (the key
    rotation's second step, once DESKBROKER_SECRET_KEY_PREVIOUS names the old key)."""
    from deskbroker.services.context import BrokerContext
    from deskbroker.services.keys import reseal

    ctx = BrokerContext.from_settings(_settings(data_dir, db))
    try:
        count = reseal(ctx)
    except ValueError as exc:
        console.print(f"[bold red]nothing resealed:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"resealed [bold]{count}[/] secrets under the current key")


@user_app.command("unlock")
def user_unlock(
    username: Annotated[str, typer.Argument(help="as the user types it at sign-in")] = "",
    tenant: Annotated[str, typer.Option(help="Tenant name")] = "default",
    address: Annotated[
        str | None, typer.Option(help="Clear a client address instead of an account")
    ] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Clear an account's (or an address's) failed sign-ins and lockout: the way back in
    when every administrator is locked out."""
    from deskbroker.services.context import BrokerContext
    from deskbroker.services.throttle import account_key, address_key
    from deskbroker.store import accounts, events, throttle

    if not username and address is None:
        console.print("[red]name a user, or give --address[/]")
        raise typer.Exit(2)
    ctx = BrokerContext.from_settings(_settings(data_dir, db))
    with ctx.db.write() as session:
        tenant_id = accounts.tenant_id_named(session, tenant)
        if address is not None:
            key, tenant_id = address_key(address), None
        elif tenant_id is None:
            console.print(f"[red]tenant {tenant!r} does not exist[/]")
            raise typer.Exit(2)
        else:
            key = account_key(ctx.settings.effective_secret_key, tenant_id, username)
        cleared = throttle.forget(session, [key])
        events.append(
            session,
            "admin.unlock",
            tenant_id=tenant_id,
            actor="deskbroker user unlock",
            detail={"key": key},
        )
    ctx.db.dispose()
    what = address if address is not None else username
    console.print(f"{what}: {'unlocked' if cleared else 'had no failed sign-ins'}")


@user_app.command("add")
def user_add(
    username: str,
    password: Annotated[str | None, typer.Option(help="Password (asked for when omitted)")] = None,
    role: Annotated[
        str, typer.Option(help="user, helpdesk, auditor, tenant_admin, global_admin")
    ] = "user",
    tenant: Annotated[str, typer.Option(help="Tenant name")] = "default",
    group: Annotated[list[str] | None, typer.Option(help="Group (repeatable)")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Create a local user, or reset their password and role."""
    from deskbroker.bootstrap import add_local_user
    from deskbroker.services.context import BrokerContext

    if role not in ("user", "helpdesk", "auditor", "tenant_admin", "global_admin"):
        console.print(f"[red]unknown role {role!r}[/]")
        raise typer.Exit(2)
    if password is None:
        password = getpass.getpass(f"password for {username}: ")
    if len(password) < 8:
        console.print("[red]the password must have at least 8 characters[/]")
        raise typer.Exit(2)
    ctx = BrokerContext.from_settings(_settings(data_dir, db))
    user_id = add_local_user(ctx, username, password, role=role, tenant_name=tenant, groups=group)
    console.print(f"user [bold]{username}[/] ({role}) is {user_id}")


@app.command()
def login(
    oidc: Annotated[str, typer.Option(help="The OpenID Connect identity source to sign in at")],
    url: Annotated[str, typer.Option(help="The broker's URL")] = "http://127.0.0.1:8080",
    tenant: Annotated[str | None, typer.Option(help="Tenant name (default: default)")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Token cache (default ~/.config/deskbroker/token.json)")
    ] = None,
    print_token: Annotated[bool, typer.Option(help="Also print the token on stdout")] = False,
) -> None:
    """Sign in at an OpenID provider through the broker (device flow) and keep the token."""
    from deskbroker.client.login import LoginFailed, default_token_file, device_login, store_token

    try:
        stored = device_login(url, oidc, tenant=tenant, console=console)
    except LoginFailed as exc:
        console.print(f"[red]sign-in failed:[/] {exc}")
        raise typer.Exit(1) from exc
    path = token_file or default_token_file()
    store_token(path, stored)
    console.print(f"signed in as [bold]{stored.username}[/]; token kept in {path}")
    if print_token:
        print(stored.token)


@app.command()
def explain(
    username: Annotated[
        str, typer.Argument(help="as the user types it: alice, alice@corp.example")
    ],
    client: Annotated[
        str | None, typer.Option("--from", help="Client address, e.g. 10.1.2.3")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="HH:MM today, or an ISO date and time (default now)")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of --at, e.g. Europe/Paris")] = "UTC",
    tenant: Annotated[str, typer.Option(help="Tenant name")] = "default",
    source: Annotated[str | None, typer.Option(help="Identity source name")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """What USERNAME would get from an address at a moment, and which rule decided."""
    from deskbroker.errors import DeskbrokerError, InvalidInput
    from deskbroker.explain_table import print_explanation
    from deskbroker.services.context import BrokerContext
    from deskbroker.services.explain import ExplainService, parse_client, parse_moment

    try:
        moment = parse_moment(at, timezone)
        address = parse_client(client)
        ctx = BrokerContext.from_settings(_settings(data_dir, db))
        view = ctx.cache.current(ctx.db)
        tenant_id = view.tenants_by_name.get(tenant)
        if tenant_id is None:
            raise InvalidInput(f"tenant {tenant!r} does not exist")
        result = ExplainService(ctx).explain(
            username, tenant_id=tenant_id, source=source, client_address=address, at=moment
        )
    except DeskbrokerError as exc:
        console.print(f"[red]{exc.detail}[/]", highlight=False)
        raise typer.Exit(2 if exc.status < 500 else 1) from exc
    print_explanation(console, result)


@app.command()
def demo(
    selftest: Annotated[bool, typer.Option(help="Run the whole path over HTTP and exit")] = False,
    url: Annotated[str | None, typer.Option(help="With --selftest: a running broker's URL")] = None,
    port: Annotated[int, typer.Option(help="Broker port")] = 8080,
    desktops: Annotated[int, typer.Option(help="How many Xvnc desktops")] = 3,
    data_dir: DataDir = None,
) -> None:
    """Run a demo broker with real Xvnc desktops; or check one end to end."""
    import deskbroker.demo as demo_module

    if selftest:
        sys.exit(demo_module.selftest(url=url, desktops=desktops))
    demo_module.run(port=port, desktops=desktops, data_dir=data_dir)


@app.command()
def gateway(
    host: Annotated[str | None, typer.Option(help="Address of the HTML5 listener")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the HTML5 listener")] = None,
) -> None:
    """Run the gateway: HTML5 viewers and TCP port forwards into private networks.

    Configured by DESKBROKER_GATEWAY_* variables (or gateway.conf); see docs/gateway.md."""
    import asyncio

    from deskbroker.gateway.server import serve as serve_gateway
    from deskbroker.gateway.settings import GatewaySettings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        console.print(f"[bold red]bad configuration:[/] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from exc
    console.print(
        f"[bold]deskbroker gateway[/] {settings.id} on http://{settings.host}:{settings.port}, "
        f"forwards {settings.forward_ports} on {settings.forward_host}"
    )
    asyncio.run(serve_gateway(settings))


def _progress_bar(what: str) -> Any:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    return Progress(
        TextColumn(f"[bold]{what}[/]"), BarColumn(), TaskProgressColumn(), console=console
    )


@app.command()
def backup(
    file: Annotated[Path, typer.Argument(help="The backup file to write")],
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Back up the database while the broker runs: SQLite's online backup, or pg_dump -Fc
    on PostgreSQL (docs/operators-guide.md, "Backup and restore")."""
    from deskbroker.errors import DeskbrokerError
    from deskbroker.store import backup as backups
    from deskbroker.store.db import Database

    database = Database(_settings(data_dir, db).effective_database_url)
    try:
        with _progress_bar("backing up") as bar:
            task = bar.add_task("copy", total=None)
            info = backups.backup(
                database, file, lambda done, total: bar.update(task, completed=done, total=total)
            )
    except DeskbrokerError as exc:
        console.print(f"[bold red]no backup:[/] {exc.detail}")
        raise typer.Exit(1) from exc
    finally:
        database.dispose()
    console.print(
        f"backed up the {info.kind} database at schema revision [bold]{info.revision}[/] "
        f"to {info.path} ({info.size} bytes)"
    )


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="A file `deskbroker backup` wrote")],
    force: Annotated[
        bool, typer.Option(help="Replace what the database holds (it must be empty otherwise)")
    ] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Restore a backup into the configured database (stop the broker first) and bring an
    older backup's schema up to this version's."""
    from deskbroker.errors import DeskbrokerError
    from deskbroker.store import backup as backups
    from deskbroker.store.db import Database

    database = Database(_settings(data_dir, db).effective_database_url)
    try:
        with _progress_bar("restoring") as bar:
            task = bar.add_task("copy", total=None)
            info = backups.restore(
                database,
                file,
                force=force,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except DeskbrokerError as exc:
        console.print(f"[bold red]nothing restored:[/] {exc.detail}")
        raise typer.Exit(2 if exc.status < 500 else 1) from exc
    finally:
        database.dispose()
    upgraded = f", upgraded to [bold]{info.revision_after}[/]" if info.upgraded else ""
    console.print(f"restored {info.backup.path} (schema revision {info.backup.revision}){upgraded}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
