"""A replygate deployed for a test: its settings, its CLI and its running processes.

The gateway and the worker run as separate ``python -m replygate`` processes
(as the systemd units run them); set-up and inspection go through the real
command line with ``CliRunner``. Everything lives under one directory that the
unprivileged user of a Postfix ``pipe`` transport can reach: with SQLite the
database is copied there and given to that user (SQLite running as root
hands the WAL files it creates to the database file's owner, so root and
that user share it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
from email.message import EmailMessage
from pathlib import Path
from typing import IO

from click.testing import CliRunner

from replygate.cli import main
from replygate.config import Settings
from tests.helpers import free_port, port_open, read_maildir, wait_for

REPLY_DOMAIN = "reply.test"
STAFF = "dana@staff.test"
CLIENT = "cleo@client.test"


class Stack:
    """replygate configured under ``root`` for the database of ``settings``."""

    def __init__(self, settings: Settings, root: Path, *, pipe_user: str = "nobody") -> None:
        self.root = root
        self.pipe_user = pwd.getpwnam(pipe_user)
        state = root / "state"
        state.mkdir(mode=0o750)
        os.chown(state, self.pipe_user.pw_uid, self.pipe_user.pw_gid)
        database_url = settings.database_url
        if settings.is_sqlite:
            source = Path(database_url.removeprefix("sqlite:///"))
            target = state / "replygate.db"
            shutil.copyfile(source, target)
            os.chown(target, self.pipe_user.pw_uid, self.pipe_user.pw_gid)
            database_url = f"sqlite:///{target}"
        # The pipe user seals what it queues: the key file is its own (mode 0600), as
        # the service user's would be; root, running everything else here, reads it too.
        keys = state / "keys"
        shutil.copyfile(settings.encryption_keys_file, keys)
        os.chown(keys, self.pipe_user.pw_uid, self.pipe_user.pw_gid)
        keys.chmod(0o600)
        self.smtp_port = free_port()
        self.outbox = root / "outbox"
        self.env = {
            "REPLYGATE_DATABASE_URL": database_url,
            "REPLYGATE_SECRET_KEY": settings.secret_key,
            "REPLYGATE_ENCRYPTION_KEYS_FILE": str(keys),
            "REPLYGATE_VAR_DIR": str(state),
            "REPLYGATE_OUTBOX_MAILDIR": str(self.outbox),
            "REPLYGATE_REPLY_DOMAIN": REPLY_DOMAIN,
            "REPLYGATE_SMTP_HOST": "127.0.0.1",
            "REPLYGATE_SMTP_PORT": str(self.smtp_port),
            "REPLYGATE_PORTAL_PORT": str(free_port()),
            "REPLYGATE_WORKER_POLL_SECONDS": "0.05",
            # The pipe command reads only the TOML file: name the loopback DNS server there too.
            "REPLYGATE_DNS_NAMESERVERS": settings.dns_nameservers,
        }
        self.secret_key = settings.secret_key
        self.processes: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    # -- configuration for an MTA's pipe transport ------------------------------------------

    def write_config_file(self) -> Path:
        """The TOML file the pipe command reads (it gets no REPLYGATE_* environment)."""
        path = self.root / "replygate.toml"
        lines = ["[replygate]"]
        for key, value in self.env.items():
            name = key.removeprefix("REPLYGATE_").lower()
            lines.append(f"{name} = {json.dumps(value)}")
        path.write_text("\n".join(lines) + "\n")
        os.chown(path, 0, self.pipe_user.pw_gid)
        path.chmod(0o640)
        return path

    def program(self) -> Path:
        """A ``replygate`` program the pipe user can run.

        That is the virtualenv's own, unless its interpreter lives where the
        user cannot reach it (a Python built under root's private home, as
        pyenv does): then a virtualenv made from the system's Python of the
        same version, which imports replygate and its dependencies from ours.
        """
        ours = Path(sys.executable).parent / "replygate"
        if self.runs_as_pipe_user([str(ours), "--version"]):
            return ours
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        system_python = Path(f"/usr/bin/python{version}")
        assert system_python.exists(), (
            f"the pipe user cannot run {ours}, and there is no {system_python} to run it with"
        )
        shim = self.root / "pipe-venv"
        subprocess.run(
            [str(system_python), "-m", "venv", "--without-pip", str(shim)], check=True, timeout=60
        )
        site_packages = sysconfig.get_paths()["purelib"]
        target = shim / "lib" / f"python{version}" / "site-packages"
        (target / "replygate-deps.pth").write_text(
            f"import site; site.addsitedir({site_packages!r})\n"
        )
        program = shim / "bin" / "replygate"
        program.write_text(
            f"#!{shim / 'bin' / 'python'}\n"
            "import sys\nfrom replygate.cli import main\nsys.exit(main())\n"
        )
        program.chmod(0o755)
        assert self.runs_as_pipe_user([str(program), "--version"]), f"{program} does not run"
        return program

    def runs_as_pipe_user(self, argv: list[str]) -> bool:
        """Whether ``argv`` runs as the pipe user, switched to the way Postfix's pipe does."""
        user = self.pipe_user
        try:
            result = subprocess.run(
                argv,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[user.pw_gid],
                capture_output=True,
                timeout=60,
                cwd=self.root,
                env={"PATH": "/usr/bin:/bin"},
            )
        except PermissionError:
            return False
        return result.returncode == 0

    # -- command line -----------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json"))

    def seed(self) -> None:
        """A staff member, a client, and Convenience Mode on."""
        self.cli("users", "add", STAFF, "--name", "Dana Staff", "--role", "staff")
        self.cli("users", "add", CLIENT, "--name", "Cleo Client", "--role", "client")
        self.cli("settings", "convenience", "on", "--acknowledge-hipaa", "--by", STAFF)

    # -- processes --------------------------------------------------------------------------

    def spawn(self, name: str, *args: str) -> None:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "replygate", *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = (proc, log)

    def start_gateway(self) -> None:
        self.spawn("gateway", "serve", "--role", "gateway")
        wait_for(
            lambda: port_open("127.0.0.1", self.smtp_port) or self.check_alive(),
            what="the SMTP gateway to listen",
            timeout=30,
        )

    def start_worker(self) -> None:
        self.spawn("worker", "worker")

    def check_alive(self) -> bool:
        for name, (proc, _) in self.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"replygate {name} exited:\n{self.output(name)}")
        return False

    def output(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc, _ in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()

    # -- results ----------------------------------------------------------------------------

    def outbox_mail_to(self, address: str) -> list[EmailMessage]:
        return [m for m in read_maildir(self.outbox) if address in str(m["To"])]
