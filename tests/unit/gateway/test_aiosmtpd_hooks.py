"""The aiosmtpd internals the gateway's protocol forks are still there, at the pinned release.

``replygate.gateway.protocol`` overrides, calls and sets private names of
aiosmtpd (``protocol.PRIVATE_HOOKS``), so another release may break it
without an error at import. These checks name what moved: the installed
release against the pin, every name where the fork expects it, and every
private attribute ``SMTP.__init__`` sets (the protocol does not call it, so
it must set each one itself). No socket: ``SMTP`` is built
on a fresh event loop and never connected.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from replygate.config import load_settings
from replygate.errors import ConfigError
from replygate.gateway import protocol
from replygate.gateway.protocol import AIOSMTPD_VERSION, PRIVATE_HOOKS, GatewaySMTP
from replygate.gateway.shared import Shared
from tests.conftest import TEST_SECRET

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
MODULES = ("aiosmtpd.smtp", "aiosmtpd.proxy_protocol")


def _moved(where: str, names: list[str]) -> str:
    """The failure message: what is missing, and what the fork was written against."""
    return (
        f"aiosmtpd {aiosmtpd.__version__} has no {', '.join(names)} on {where}; "
        f"replygate.gateway.protocol forks aiosmtpd {AIOSMTPD_VERSION}'s private hooks "
        "(its module docstring lists each and why): adapt it before moving the pin"
    )


class Handler:
    """A handler with no hooks: ``SMTP.__init__`` only lists its methods."""


def _instances() -> tuple[SMTP, asyncio.StreamReaderProtocol, GatewaySMTP]:
    """Stock ``SMTP``, the asyncio protocol it extends, and ours, never connected."""
    settings = load_settings(
        env={}, overrides={"database_url": "sqlite:///unused.db", "secret_key": TEST_SECRET}
    )

    async def build() -> tuple[SMTP, asyncio.StreamReaderProtocol, GatewaySMTP]:
        loop = asyncio.get_running_loop()
        stock = SMTP(Handler(), hostname="stock.test", loop=loop)
        base = asyncio.StreamReaderProtocol(
            asyncio.StreamReader(loop=loop), client_connected_cb=lambda r, w: None, loop=loop
        )
        shared = Shared.build(settings, Handler(), GatewaySMTP)  # type: ignore[arg-type]
        return stock, base, GatewaySMTP(shared, loop)

    return asyncio.run(build())


def test_the_installed_aiosmtpd_is_the_forked_release() -> None:
    hooks = sorted({name for names in PRIVATE_HOOKS.values() for name in names})
    assert aiosmtpd.__version__ == AIOSMTPD_VERSION, (
        f"aiosmtpd {aiosmtpd.__version__} is installed, but replygate.gateway.protocol "
        f"forks aiosmtpd {AIOSMTPD_VERSION} and relies on its private {', '.join(hooks)}: "
        "read the new release's smtp.py against protocol's docstring, adapt, then move "
        "protocol.AIOSMTPD_VERSION and the pin in pyproject.toml together"
    )


def test_pyproject_pins_exactly_the_forked_release() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(r"aiosmtpd\b", d)]
    assert pins == [f"aiosmtpd=={AIOSMTPD_VERSION}"], (
        f"pyproject.toml requires {pins}, but replygate.gateway.protocol forks the "
        f"internals of aiosmtpd {AIOSMTPD_VERSION} (protocol.AIOSMTPD_VERSION)"
    )


def test_the_hooks_are_listed_where_the_checks_look() -> None:
    assert set(PRIVATE_HOOKS) == {*MODULES, "SMTP", "SMTP.__init__", "SMTP._cb_client_connected"}


@pytest.mark.parametrize("module", MODULES)
def test_the_module_names_the_fork_imports_exist(module: str) -> None:
    found = importlib.import_module(module)
    missing = [name for name in PRIVATE_HOOKS[module] if not hasattr(found, name)]
    assert not missing, _moved(module, missing)


def test_the_smtp_methods_the_fork_overrides_or_calls_exist() -> None:
    missing = [name for name in PRIVATE_HOOKS["SMTP"] if not callable(getattr(SMTP, name, None))]
    assert not missing, _moved("aiosmtpd.smtp.SMTP", missing)


def test_smtp_init_sets_the_attributes_the_fork_sets_in_its_place() -> None:
    stock, _, _ = _instances()
    missing = [name for name in PRIVATE_HOOKS["SMTP.__init__"] if name not in vars(stock)]
    assert not missing, _moved("an SMTP after SMTP.__init__", missing)


def test_smtp_init_sets_no_private_attribute_the_fork_does_not_know() -> None:
    """A new private attribute of ``SMTP.__init__`` is one our ``__init__`` does not set."""
    stock, base, _ = _instances()
    private = {name for name in vars(stock) if name.startswith("_")} - set(vars(base))
    unknown = sorted(private - set(PRIVATE_HOOKS["SMTP.__init__"]))
    assert not unknown, (
        f"aiosmtpd {aiosmtpd.__version__}'s SMTP.__init__ sets {', '.join(unknown)}, "
        f"unknown to replygate.gateway.protocol (a fork of aiosmtpd {AIOSMTPD_VERSION}, "
        "which never calls SMTP.__init__): set it in Shared.connection_constants and "
        "list it in protocol.PRIVATE_HOOKS"
    )


def test_our_init_sets_every_attribute_smtp_init_would() -> None:
    _, _, ours = _instances()
    missing = [name for name in PRIVATE_HOOKS["SMTP.__init__"] if name not in vars(ours)]
    assert not missing, f"GatewaySMTP.__init__ leaves unset {', '.join(missing)}"


def test_the_stream_callback_sets_the_reader_and_writer() -> None:
    stock, _, _ = _instances()
    reader, writer = object(), object()
    stock._cb_client_connected(reader, writer)  # type: ignore[arg-type]
    values: dict[str, Any] = vars(stock)
    missing = [
        name
        for name in PRIVATE_HOOKS["SMTP._cb_client_connected"]
        if values.get(name) not in (reader, writer)
    ]
    assert not missing, _moved("an SMTP after SMTP._cb_client_connected", missing)


def test_the_module_docstring_says_why_for_every_hook() -> None:
    doc = protocol.__doc__ or ""
    names = {name for names in PRIVATE_HOOKS.values() for name in names}
    unexplained = sorted(
        name for name in names if not re.search(rf"``([\w.]+\.)?{re.escape(name)}``", doc)
    )
    assert not unexplained, f"replygate.gateway.protocol's docstring does not name {unexplained}"


def test_the_gateway_refuses_another_aiosmtpd_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiosmtpd, "__version__", "1.4.7")
    with pytest.raises(ConfigError) as refused:
        protocol.check_aiosmtpd()
    message = str(refused.value)
    assert "\n" not in message
    assert "aiosmtpd 1.4.7 is installed" in message
    assert f"aiosmtpd=={AIOSMTPD_VERSION}" in message


def test_the_gateway_accepts_the_forked_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiosmtpd, "__version__", AIOSMTPD_VERSION)
    protocol.check_aiosmtpd()
