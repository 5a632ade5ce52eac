"""The command line's one style (``replygate.cli.output``): tables with a header row,
``Z`` times, words for booleans and empties, plurals; help on every option and a
``click.Choice`` for every enumerated one, checked over every command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import click
import pytest
from click.testing import CliRunner

from replygate.cli import main
from replygate.cli.output import choice_of, iso_z, plural, shown, table
from replygate.mail.decisions import explain
from replygate.store.states import InboundStatus


def test_times_are_iso_8601_utc_to_the_second_with_z() -> None:
    moment = datetime(2026, 12, 1, 23, 39, 29, 123456, tzinfo=UTC)
    assert iso_z(moment) == "2026-12-01T23:39:29Z"
    assert iso_z(moment.astimezone(timezone(timedelta(hours=2)))) == "2026-12-01T23:39:29Z"
    assert iso_z(moment.replace(tzinfo=None)) == "2026-12-01T23:39:29Z"  # stored UTC, zone lost
    assert iso_z("2026-12-01T23:39:29.123456+00:00") == "2026-12-01T23:39:29Z"
    assert iso_z(None) is None


def test_booleans_and_empties_are_words() -> None:
    assert [shown(v) for v in (True, False, None, "", [], ["a", "b"], 3)] == [
        "yes",
        "no",
        "none",
        "none",
        "none",
        "a, b",
        "3",
    ]
    assert shown(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_plurals_agree_with_their_count() -> None:
    assert [plural(n, "message") for n in (0, 1, 2)] == ["0 messages", "1 message", "2 messages"]
    assert plural(2, "reply address", "reply addresses") == "2 reply addresses"


def _printed(text: click.Command | object) -> list[str]:
    @click.command()
    def show() -> None:
        assert callable(text)
        text()

    return CliRunner().invoke(show).output.splitlines()


def test_a_table_has_a_header_row_aligned_columns_and_one_line_per_row() -> None:
    out = _printed(
        table(
            ("id", "subject", "pinned"),
            [(7, "Hello\nthere\x1b]0;owned\x07", True), (12, "Re: x", None)],
            empty="no threads",
        )
    )
    subject = r"Hello\nthere\x1b]0;owned\x07"
    assert out == [
        f"ID  {'SUBJECT':<{len(subject)}}  PINNED",
        f" 7  {subject}  yes",
        f"12  {'Re: x':<{len(subject)}}  none",
    ]


def test_an_empty_table_keeps_its_header_and_says_so() -> None:
    assert _printed(table(("id", "subject"), [], empty="no threads")) == [
        "ID  SUBJECT",
        "(no threads)",
    ]


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    ctx = click.Context(group)
    found: dict[str, click.Command] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{path} {option.opts[0]}"
        for path, command in _commands(main).items()
        for option in command.params
        if isinstance(option, click.Option) and not option.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("path", "option"),
    [
        ("queue list", "status"),
        ("outbox list", "status"),
        ("users add", "role"),
        ("serve", "role"),
        ("settings sender-policy", "policy"),
        ("settings dmarc-policy", "policy"),
        ("settings convenience", "state"),
    ],
)
def test_every_enumerated_option_is_a_choice(path: str, option: str) -> None:
    (param,) = [p for p in _commands(main)[path].params if p.name == option]
    assert isinstance(param.type, click.Choice)
    assert choice_of(InboundStatus).choices == tuple(s.value for s in InboundStatus)


def test_the_stored_before_250_sentence_is_said_once_and_replays_keep_history() -> None:
    """Two DATA checks and the store are three different sentences; a replay of filed
    mail is a decision of its own after the first filing, which stays."""
    row = {
        "id": 4,
        "mail_from": "cleo@example.com",
        "rcpt": "reply+x@reply.test",
        "received_at": "2026-12-01T23:39:29.5+00:00",
        "size": 812,
        "status": "filed",
        "reason": None,
    }
    records = [
        {"stage": "data", "check": "sender", "sender": "ok"},
        {"stage": "data", "check": "attachments", "attachments": 0},
        {"stage": "accept", "via": "smtp", "size": 812},
        {"stage": "extract", "layers": ["quote"], "message": 9},
        {"stage": "replay", "at": "2026-12-02T01:02:03.4+00:00", "previous": "filed"},
        {"stage": "extract", "layers": ["quote"], "message": 9, "duplicate": True},
    ]
    said = explain(row, records)
    assert said[0] == (
        "Mail 4 from cleo@example.com to reply+x@reply.test, received 2026-12-01T23:39:29Z, "
        "812 bytes."
    )
    assert sum("before answering 250" in line for line in said) == 1
    assert "- The gateway checked the sender at DATA (sender=ok)." in said
    assert "- The gateway checked the attachments at DATA (attachments=0)." in said
    assert "- Replayed by an operator at 2026-12-02T01:02:03Z (it was filed)." in said
    assert said[-2].endswith("this mail was filed already as message 9, so nothing new was filed.")
    assert said[-1] == "Now filed."
    legacy = explain(row, [{"event": "replay", "at": "2026-12-02T01:02:03+00:00"}])
    assert legacy[1] == "- Replayed by an operator at 2026-12-02T01:02:03Z."
