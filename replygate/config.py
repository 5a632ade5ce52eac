"""Settings: one frozen object built once by the CLI and passed down.

Sources, later wins: built-in defaults, an optional TOML file, then
``REPLYGATE_*`` environment variables. Nothing here runs at import time; the
environment is a parameter so tests pass their own.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from replygate.errors import ConfigError

ENV_PREFIX = "REPLYGATE_"
SECRET_FIELDS = frozenset({"secret_key", "smarthost_password"})


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Field names are the TOML keys and, upper-cased
    with the ``REPLYGATE_`` prefix, the environment variable names."""

    var_dir: Path = Path("var")
    database_url: str = ""
    # SQLite only: the largest the database file may grow, in MiB (0: no cap). Past
    # it the gateway defers mail with 452 4.3.1 instead of filling the disk.
    sqlite_max_size_mb: int = 0
    secret_key: str = field(default="", repr=False)
    # The keys that seal message content at rest, in a file apart from the database
    # (and its backups): ``var/keys`` by default for SQLite, required for PostgreSQL.
    encryption_keys_file: Path = Path()
    reply_domain: str = "reply.localhost"
    notification_from: str = ""
    # The name the organisation is created with, on the database's first use. The
    # database keeps it from then on: `replygate settings organisation-name NAME`
    # (or the portal's settings page) renames it, and changing this does nothing.
    organisation_name: str = "Our practice"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_hostname: str = ""
    max_message_size: int = 25 * 1024 * 1024
    smtp_max_sessions: int = 512  # more concurrent connections are told 421 4.3.2
    smtp_max_bytes_in_flight: int = 64 * 1024 * 1024  # message bytes held in memory at once
    smtp_max_recipients: int = 100  # per transaction (RFC 5321 4.5.3.1.8: at least 100)
    smtp_command_timeout: float = 300.0  # idle seconds awaiting a command, then 421 4.4.2
    smtp_data_timeout: float = 300.0  # idle seconds inside DATA, then 421 4.4.2
    # A client IP refused this many unknown reply addresses within the window
    # is deferred (450 4.7.1 at RCPT, 421 4.7.0 at connect) for the cool-down; 0 turns it off.
    smtp_throttle_failures: int = 10
    smtp_throttle_window_seconds: float = 600.0
    smtp_throttle_cooldown_seconds: float = 900.0
    # IPs or networks never throttled: the MTAs relaying to the gateway ("10.0.0.5, 10.1.0.0/16").
    # Loopback by default, where the recommended front Postfix or Exim connects from.
    smtp_trusted_relays: str = "127.0.0.0/8, ::1"
    # STARTTLS is offered when both are set (PEM files); required before MAIL when asked.
    smtp_tls_cert: str = ""
    smtp_tls_key: str = ""
    smtp_require_starttls: bool = False
    # Behind a load balancer: every connection starts with a PROXY v1/v2 header.
    smtp_proxy_protocol: bool = False
    token_ttl_days: int = 90

    outbox_maildir: Path = Path("")
    smarthost_host: str = ""
    smarthost_port: int = 25
    smarthost_starttls: bool = True
    smarthost_username: str = ""
    smarthost_password: str = field(default="", repr=False)
    delivery_max_attempts: int = 8
    delivery_backoff_seconds: float = 30.0

    portal_host: str = "127.0.0.1"
    portal_port: int = 8025
    portal_url: str = ""
    # A portal login ends after this many idle seconds (for staff, admins and clients
    # alike), and this long after it began whatever happens.
    session_idle_seconds: int = 900
    session_max_seconds: int = 12 * 60 * 60
    # Reverse proxies whose X-Forwarded-For names the client ("10.0.0.5, 10.1.0.0/16").
    # None by default: otherwise anyone could pick the address their failed logins count against.
    trusted_proxies: str = ""

    worker_poll_seconds: float = 0.5
    worker_lease_seconds: float = 300.0  # a claim older than this is taken over by another worker
    worker_max_attempts: int = 5
    # How often a worker looks for unread-message reminders that have fallen due.
    reminder_sweep_seconds: float = 15.0
    retention_days: int = 30
    # The audit trail is kept this long (45 CFR 164.316(b)(2): six years), whatever
    # ``queue purge`` removes; ``replygate audit purge`` applies it.
    audit_retention_days: int = 6 * 366
    attachment_max_bytes: int = 10 * 1024 * 1024
    attachments_total_max_bytes: int = 20 * 1024 * 1024
    max_attachments: int = 20  # files per mail, those inside forwarded messages included
    attachment_types: str = (
        "application/pdf,image/png,image/jpeg,image/gif,image/heic,text/plain,text/csv,"
        "application/msword,application/vnd.openxmlformats-officedocument.*,"
        "application/vnd.oasis.opendocument.*,application/rtf,message/rfc822"
    )
    bounce_suppress_after: int = 3
    breaker_max_replies: int = 20
    breaker_window_minutes: int = 10
    sender_allow_plus_tags: bool = False
    trusted_authserv_ids: str = ""
    # Who checks SPF, DKIM, ARC and DMARC: ``verify`` (the gateway itself, as the MX),
    # ``trust`` (the relays named by trusted_authserv_ids), ``off``. Empty: ``verify``
    # unless trusted_authserv_ids names a relay (``mail_auth_mode``).
    mail_auth: str = ""
    # The authserv-id of the Authentication-Results the gateway writes; every gateway
    # and worker of one installation shares it. Empty: the reply domain.
    authserv_id: str = ""
    # Resolvers for those checks ("127.0.0.1:5353, 192.0.2.53"); empty: /etc/resolv.conf.
    dns_nameservers: str = ""
    dns_timeout_seconds: float = 3.0  # per lookup, retries included
    mail_auth_timeout_seconds: float = 15.0  # all the checks of one message, then 451 4.4.3
    # Forwarders whose ARC seal may vouch for a DMARC pass they saw ("lists.example.org").
    arc_trusted_sealers: str = ""
    # DKIM-sign notifications with this key (``replygate dkim keygen``); empty: unsigned.
    dkim_key_path: str = ""
    dkim_selector: str = ""
    dkim_domain: str = ""  # empty: the domain of notification_from
    log_json: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @functools.cached_property
    def trusted_authserv(self) -> frozenset[str]:
        """authserv-ids whose Authentication-Results we believe (our own MTAs).

        Asked for every accepted message; worked out once per settings object.
        """
        ids = self.trusted_authserv_ids.split(",")
        return frozenset(t.strip().lower() for t in ids if t.strip())

    @property
    def mail_auth_mode(self) -> str:
        """``verify``, ``trust`` or ``off``: ``mail_auth``, or by default ``verify``
        when no trusted relay is named and ``trust`` when one is."""
        if self.mail_auth:
            return self.mail_auth
        return "trust" if self.trusted_authserv else "verify"

    @property
    def own_authserv_id(self) -> str:
        """The authserv-id the gateway stamps its own results with (lower case)."""
        return (self.authserv_id or self.reply_domain).strip().lower()

    @functools.cached_property
    def authserv_ids_believed(self) -> frozenset[str]:
        """Whose Authentication-Results the acceptance policy reads: the trusted relays'
        under ``trust``, ours too under ``verify``, nobody's under ``off``."""
        mode = self.mail_auth_mode
        if mode == "off":
            return frozenset()
        if mode == "verify":
            return self.trusted_authserv | {self.own_authserv_id}
        return self.trusted_authserv

    @property
    def dkim_signing_domain(self) -> str:
        """The d= of our notifications' DKIM signatures."""
        return (self.dkim_domain or self.notification_from.rpartition("@")[2]).strip().lower()

    @functools.cached_property
    def arc_sealers(self) -> frozenset[str]:
        """``arc_trusted_sealers`` as lower-case domains, parsed once."""
        return frozenset(
            d.strip().lower().rstrip(".") for d in self.arc_trusted_sealers.split(",") if d.strip()
        )

    @functools.cached_property
    def attachment_allow_list(self) -> tuple[str, ...]:
        """``attachment_types`` as lower-cased patterns (``*`` wildcards), parsed once."""
        return tuple(t.strip().lower() for t in self.attachment_types.split(",") if t.strip())

    @functools.cached_property
    def trusted_proxy_networks(self) -> tuple[str, ...]:
        """``trusted_proxies`` as networks in canonical form; ``ConfigError`` for a bad entry."""
        networks = []
        for entry in self.trusted_proxies.split(","):
            if entry.strip():
                try:
                    networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
                except ValueError as exc:
                    raise ConfigError(f"trusted_proxies: {entry.strip()!r} is no network") from exc
        return tuple(networks)

    @property
    def uses_smarthost(self) -> bool:
        return bool(self.smarthost_host)

    def masked(self) -> dict[str, Any]:
        """The configuration as plain values with secrets masked, for display."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = "********" if value else ""
            elif f.name == "database_url":
                value = _mask_url_password(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    if ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}"


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or say which key is wrong."""
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(str(raw))
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r} has an invalid value: {raw!r}") from exc


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, TOML file, environment and explicit overrides.

    Derived defaults (database under ``var_dir``, Maildir outbox, a secret key
    generated once and kept under ``var_dir``) are filled in last, so a bare
    ``replygate demo`` runs with no set-up at all.
    """
    env = os.environ if env is None else env
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}

    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {config_file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {config_file} is not valid TOML: {exc}") from exc
        section = data.get("replygate", data)
        for key, raw in section.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, known[key], raw)

    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in known:
            values[name] = _coerce(name, known[name], raw)

    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = _coerce(key, known[key], raw)

    settings = Settings(**values)
    return _derive(settings)


def _derive(s: Settings) -> Settings:
    var_dir = s.var_dir
    changes: dict[str, Any] = {}
    if not s.database_url:
        changes["database_url"] = f"sqlite:///{(var_dir / 'replygate.db').as_posix()}"
    if not str(s.outbox_maildir) or str(s.outbox_maildir) == ".":
        changes["outbox_maildir"] = var_dir / "outbox"
    if not s.notification_from:
        changes["notification_from"] = f"notifications@{s.reply_domain}"
    if not s.portal_url:
        changes["portal_url"] = f"http://{s.portal_host}:{s.portal_port}"
    if not s.smtp_hostname:
        changes["smtp_hostname"] = s.reply_domain
    s = dataclasses.replace(s, **changes)
    if not s.secret_key:
        if not s.is_sqlite:
            raise ConfigError(
                "REPLYGATE_SECRET_KEY must be set explicitly when the database is not the "
                "embedded SQLite: every host must sign tokens and sessions with the same key"
            )
        s = dataclasses.replace(s, secret_key=_local_secret(var_dir))
    if not str(s.encryption_keys_file) or str(s.encryption_keys_file) == ".":
        if not s.is_sqlite:
            raise ConfigError(
                "REPLYGATE_ENCRYPTION_KEYS_FILE must be set explicitly when the database is not "
                "the embedded SQLite: every host must seal with the same keys, kept apart from it"
            )
        s = dataclasses.replace(s, encryption_keys_file=var_dir / "keys")
    if len(s.secret_key) < 32:
        raise ConfigError("the secret key must be at least 32 characters long")
    if s.session_idle_seconds <= 0 or s.session_max_seconds <= 0:
        raise ConfigError("session_idle_seconds and session_max_seconds must be positive")
    if s.mail_auth not in ("", "verify", "trust", "off"):
        raise ConfigError(f"mail_auth must be verify, trust or off, not {s.mail_auth!r}")
    if s.mail_auth == "trust" and not s.trusted_authserv:
        raise ConfigError("mail_auth = trust needs trusted_authserv_ids: whose results to trust")
    if s.dkim_key_path and not s.dkim_selector:
        raise ConfigError("dkim_key_path needs dkim_selector: the selector its DNS record is under")
    s.trusted_proxy_networks  # noqa: B018 - refuses a malformed entry now, not at the first login
    return s


def _local_secret(var_dir: Path) -> str:
    """Read the key kept under ``var_dir``, creating it (mode 0600) on first use."""
    path = var_dir / "secret_key"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key + "\n")
    return key
