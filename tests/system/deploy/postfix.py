"""A throw-away Postfix instance on loopback, configured and started by a test.

Debian's ``postfix`` package is used as installed (``.ci/system-deps.sh``), but
nothing of the system instance is touched: the instance has its own
configuration directory, queue directory, data directory and log file under
one temporary root, and is started with ``postfix -c DIR start``. Every
service runs unchrooted (the temporary root is not a chroot jail), smtpd
listens on 127.0.0.1 at a free port, and nothing is delivered anywhere but
to a transport map and to virtual Maildirs under the root.

Running it needs root (the master daemon starts as root and drops to the
``postfix`` user), like any Postfix.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from email.message import EmailMessage
from pathlib import Path

from tests.helpers import port_open, read_maildir, wait_for

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"

# Debian's default master.cf, unchrooted, without the services we never use.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtpd_listen} inet n      -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/log/maillog
maillog_file_prefixes = {root}

myhostname = mx.replygate.test
mydomain = replygate.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {relay_domains}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtputf8_enable = no
biff = no

# Reply domains go to replygate (over SMTP, or through the pipe transport).
transport_maps = texthash:{root}/etc/transport
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
replygate_destination_recipient_limit = 1

# The senders' own mail (and so the delivery reports for them) lands in Maildirs.
virtual_mailbox_domains = {mailbox_domains}
virtual_mailbox_base = {root}/vmail
virtual_mailbox_maps = texthash:{root}/etc/vmailbox
virtual_minimum_uid = 1
virtual_uid_maps = static:{vmail_uid}
virtual_gid_maps = static:{vmail_gid}

# A test never waits minutes for a retry.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
"""


class PostfixInstance:
    """One Postfix with its own configuration, queue and Maildirs under ``root``.

    ``transport`` maps a domain to a Postfix transport (``smtp:[127.0.0.1]:2525``
    or ``replygate:``); ``mailboxes`` are addresses whose mail (and delivery
    reports) is kept in a Maildir; ``pipe_service`` is an extra ``master.cf``
    entry, written as is.
    """

    def __init__(
        self,
        root: Path,
        *,
        smtpd_port: int,
        transport: dict[str, str],
        mailboxes: list[str],
        pipe_service: str = "",
    ) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.smtpd_port = smtpd_port
        self.transport = transport
        self.mailboxes = mailboxes
        self.pipe_service = pipe_service
        self.started = False
        self.vmail_user = pwd.getpwnam("nobody")

    # -- configuration ----------------------------------------------------------------------

    def write_config(self) -> None:
        for sub in ("etc", "queue", "data", "log", "vmail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("data", "vmail"):
            os.chown(self.root / sub, *self._owner(sub))
        domains = sorted({a.rpartition("@")[2] for a in self.mailboxes})
        main_cf = MAIN_CF.format(
            root=self.root,
            relay_domains=", ".join(sorted(self.transport)) or "",
            mailbox_domains=", ".join(domains),
            vmail_uid=self.vmail_user.pw_uid,
            vmail_gid=self.vmail_user.pw_gid,
        )
        (self.config_dir / "main.cf").write_text(main_cf)
        master_cf = MASTER_CF.format(smtpd_listen=f"127.0.0.1:{self.smtpd_port}")
        if self.pipe_service:
            master_cf += self.pipe_service.rstrip("\n") + "\n"
        (self.config_dir / "master.cf").write_text(master_cf)
        (self.config_dir / "transport").write_text(
            "".join(f"{domain} {target}\n" for domain, target in self.transport.items())
        )
        (self.config_dir / "vmailbox").write_text(
            "".join(f"{a} {a.rpartition('@')[2]}/{a.partition('@')[0]}/\n" for a in self.mailboxes)
        )

    def _owner(self, sub: str) -> tuple[int, int]:
        if sub == "vmail":
            return self.vmail_user.pw_uid, self.vmail_user.pw_gid
        postfix = pwd.getpwnam("postfix")
        return postfix.pw_uid, postfix.pw_gid

    # -- running ----------------------------------------------------------------------------

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def start(self) -> None:
        self.write_config()
        self.started = True  # from here on, stop() cleans up whatever did start
        result = self.postfix("start", check=False)
        if result.returncode != 0:
            raise AssertionError(
                f"postfix start failed:\n{result.stdout}{result.stderr}{self.log()}"
            )
        wait_for(
            lambda: port_open("127.0.0.1", self.smtpd_port),
            what="Postfix smtpd to listen",
            timeout=30,
        )

    def stop(self) -> None:
        if not self.started or not (self.config_dir / "main.cf").exists():
            return
        if not self.master_running():
            self.started = False
            return
        self.postfix("stop", check=False)
        wait_for(lambda: not self.master_running(), what="Postfix to stop", timeout=30)
        self.started = False

    def master_running(self) -> bool:
        return self.postfix("status", check=False).returncode == 0

    def sendmail(self, raw: bytes, *, sender: str, recipients: list[str]) -> None:
        """Submit through Postfix's own ``sendmail`` (postdrop into the maildrop queue)."""
        result = subprocess.run(
            [SENDMAIL, "-C", str(self.config_dir), "-i", "-f", sender, "--", *recipients],
            input=raw,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    # -- reading the results ----------------------------------------------------------------

    def log(self) -> str:
        path = self.root / "log" / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def mailbox(self, address: str) -> list[EmailMessage]:
        local, _, domain = address.partition("@")
        return read_maildir(self.root / "vmail" / domain / local)


def instance_root() -> Path:
    """A fresh directory every Postfix process and the pipe user can traverse.

    pytest's own temporary directories are private to root (mode 0700), which
    the unprivileged Postfix daemons and the pipe command could not enter.
    """
    root = Path(tempfile.mkdtemp(prefix="replygate-postfix-"))
    root.chmod(0o755)
    return root


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
