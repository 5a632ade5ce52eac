"""The package as a stranger installs it: ``python -m build``, then
``pip install dist/*.whl`` into a fresh virtualenv and nothing else.

The wheel is built the standard way (an isolated build from the sdist, so
the sdist is proven too). In that venv, run from an empty directory with
none of the test environment, ``replygate demo`` seeds the demo
organisation, ``replygate serve`` starts, one reply sent over SMTP to the
address the demo printed is filed in its thread, and the portal answers
with its pages, stylesheet and icon. A module missing from the declared
dependencies, or a template, migration or static file missing from the
wheel, fails here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.helpers import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[3]
# Building and installing fetch from the package index: minutes on a cold cache.
INSTALL_TIMEOUT = 600


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel built from this tree, and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    env = _clean_env()
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        env=env,
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
    )
    (wheel,) = dist.glob("replygate-*.whl")
    assert list(dist.glob("replygate-*.tar.gz")), "python -m build made no sdist"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _clean_env() -> dict[str, str]:
    """The environment without this checkout on the path nor any replygate setting."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REPLYGATE_", "PYTHON", "VIRTUAL_ENV"))
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A working directory's environment: free ports, and PostgreSQL when the run uses it."""
    env = {
        **_clean_env(),
        "REPLYGATE_SMTP_PORT": str(free_port()),
        "REPLYGATE_PORTAL_PORT": str(free_port()),
    }
    pg = os.environ.get("REPLYGATE_TEST_DATABASE_URL")
    if pg:
        # A database of its own on the shared server, created by the demo's first upgrade.
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from replygate.store.db import make_engine, normalise_url
        from replygate.store.keyring import Keyring

        name = f"replygate_wheel_{os.getpid()}"
        admin = make_engine(pg).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(normalise_url(pg)).set(database=name)
        env["REPLYGATE_DATABASE_URL"] = url.render_as_string(hide_password=False)
        env["REPLYGATE_SECRET_KEY"] = TEST_SECRET
        keys = Keyring.create(tmp_path / "keys").path
        env["REPLYGATE_ENCRYPTION_KEYS_FILE"] = str(keys)
        yield env
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        return
    yield env  # the embedded default: SQLite and a Maildir under ./var


def run(venv: Path, cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "replygate"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"replygate {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_installed_package_files_a_reply(
    venv: Path, site: dict[str, str], tmp_path: Path
) -> None:
    """demo, serve and one reply by SMTP, filed, from nothing but the wheel."""
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import replygate; print(replygate.__file__)"],
        cwd=tmp_path,
        env=site,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(venv), where

    out = run(venv, tmp_path, site, "demo")
    program = str(venv / "bin" / "replygate")
    assert f"  {program} serve" in out and f"{program} threads show" in out, out
    thread_id = int(re.search(r"^Thread (\d+):", out, re.M).group(1))  # type: ignore[union-attr]
    reply_to = re.search(r"Reply-To: (reply\+[a-z0-9]+@[\w.-]+)\)", out).group(1)  # type: ignore[union-attr]

    smtp_port, portal_port = int(site["REPLYGATE_SMTP_PORT"]), int(site["REPLYGATE_PORTAL_PORT"])
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [str(venv / "bin" / "replygate"), "serve"],
            cwd=tmp_path,
            env=site,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                server.poll() is not None
                or (port_open("127.0.0.1", smtp_port) and port_open("127.0.0.1", portal_port))
            ),
            timeout=60,
            what="serve to listen",
        )
        assert server.poll() is None, log.read_text()[-3000:]

        mail = (
            f"From: Cleo Client <cleo@example.com>\r\nTo: {reply_to}\r\n"
            "Subject: Re: Your appointment\r\nMessage-ID: <wheel-smoke@example.com>\r\n\r\n"
            "Yes, Tuesday works.\r\n\r\nOn Tue, Dana Staff wrote:\r\n> Tuesday at 10:00?\r\n"
        )
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
            refused = smtp.sendmail("cleo@example.com", [reply_to], mail.encode())
        assert refused == {}

        def filed() -> dict[str, object] | None:
            shown = run(venv, tmp_path, site, "threads", "show", str(thread_id), "--json")
            thread = json.loads(shown)
            bodies = [(m["source"], m["body"]) for m in thread["messages"]]
            return thread if ("email", "Yes, Tuesday works.") in bodies else None

        wait_for(filed, timeout=60, interval=0.5, what="the reply to be filed")

        base = f"http://127.0.0.1:{portal_port}"
        pages = [("/login", "text/html"), ("/static/app.css", "text/css")]
        for path, kind in [*pages, ("/favicon.ico", "image/svg+xml")]:
            with urllib.request.urlopen(base + path, timeout=10) as page:
                assert page.status == 200 and page.headers["Content-Type"].startswith(kind), path
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()[-3000:]
