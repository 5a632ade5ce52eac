"""The units in ``systemd/`` pass ``systemd-analyze verify`` and keep their hardening.

The units name the program as ``/opt/replygate/bin/replygate`` (the
virtualenv docs/operating.md installs into). ``systemd-analyze verify``
refuses an ``ExecStart=`` whose program does not exist, so the test copies
the units into a temporary directory with that one path rewritten to the
``replygate`` of the environment running the tests, and verifies the copies.
Everything else is verified exactly as shipped. ``systemd-analyze`` (package
``systemd``) must be installed: ``.ci/system-deps.sh`` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[3] / "systemd"
INSTALLED_PROGRAM = "/opt/replygate/bin/replygate"
SERVICES = [
    "replygate-gateway.service",
    "replygate-worker@.service",
    "replygate-portal.service",
    "replygate-purge.service",
]
UNITS = [*SERVICES, "replygate-purge.timer", "replygate.target"]

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "User": "replygate",
    "StateDirectory": "replygate",
    "EnvironmentFile": "-/etc/replygate/env",
}


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed (run .ci/system-deps.sh)")
    return path


def replygate_program() -> Path:
    program = Path(sys.executable).parent / "replygate"
    assert program.exists(), f"no replygate program next to {sys.executable}"
    return program


@pytest.fixture(scope="module")
def verifiable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units, with ExecStart= pointing at this environment's replygate."""
    out = tmp_path_factory.mktemp("units")
    program = str(replygate_program())
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        (out / name).write_text(text.replace(INSTALLED_PROGRAM, program))
    return out


def directives(name: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit (all sections), values of repeated keys in order."""
    found: dict[str, list[str]] = {}
    for line in (UNITS_DIR / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        assert not line.endswith("\\"), f"{name}: keep directives on one line"
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not a directive: {line!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_every_unit_is_shipped() -> None:
    for name in UNITS:
        assert (UNITS_DIR / name).is_file(), name
    assert all(INSTALLED_PROGRAM in (UNITS_DIR / n).read_text() for n in SERVICES)


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_passes(verifiable: Path, name: str) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(verifiable / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=verifiable,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Warnings (unknown keys, values it had to ignore) do not change the exit code.
    assert output == "", output


def test_verify_would_catch_a_broken_unit(verifiable: Path, tmp_path: Path) -> None:
    broken = tmp_path / "replygate-gateway.service"
    text = (verifiable / "replygate-gateway.service").read_text()
    broken.write_text(text.replace(str(replygate_program()), "/nonexistent/replygate"))
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "/nonexistent/replygate" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_services_are_hardened(name: str) -> None:
    found = directives(name)
    for key, value in HARDENING.items():
        assert found.get(key, [None])[-1] == value, f"{name}: {key}={value} expected"
    assert found["SystemCallFilter"][0] == "@system-service"
    assert found["ExecStart"][0].startswith(INSTALLED_PROGRAM + " ")


def test_gateway_binds_port_25_with_only_that_capability() -> None:
    found = directives("replygate-gateway.service")
    assert found["Type"] == ["notify"]
    assert found["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert found["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert found["ExecStart"] == [f"{INSTALLED_PROGRAM} --log-json serve --role gateway"]
    assert "REPLYGATE_SMTP_PORT=25" in " ".join(found["Environment"])


@pytest.mark.parametrize(
    "name", ["replygate-worker@.service", "replygate-portal.service", "replygate-purge.service"]
)
def test_other_services_have_no_capabilities(name: str) -> None:
    found = directives(name)
    assert found["CapabilityBoundingSet"] == [""]
    assert found["AmbientCapabilities"] == [""]


def test_commands() -> None:
    assert directives("replygate-worker@.service")["ExecStart"] == [
        f"{INSTALLED_PROGRAM} --log-json worker"
    ]
    assert directives("replygate-portal.service")["ExecStart"] == [
        f"{INSTALLED_PROGRAM} --log-json serve --role portal"
    ]
    assert directives("replygate-purge.service")["ExecStart"] == [
        f"{INSTALLED_PROGRAM} --log-json queue purge --older-than 30"
    ]
    timer = directives("replygate-purge.timer")
    assert timer["OnCalendar"] == ["daily"]
    assert timer["Persistent"] == ["true"]


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_level_is_low(verifiable: Path, name: str) -> None:
    """``systemd-analyze security`` rates each service (0 best, 10 worst)."""
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            "--threshold=25",
            "--no-pager",
            str(verifiable / name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=verifiable,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
