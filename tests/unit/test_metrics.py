"""What the metrics count replies under, how a gateway's tallies are published, and
that the example alert rules ask only for metrics the service exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from replygate.gateway import replies
from replygate.gateway.replies import CATALOGUE, Condition
from replygate.metrics import Instruments
from replygate.monitoring import backlog

ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("550 5.1.1 <reply+x@reply.test>: this reply address does not exist", "550 5.1.1"),
        ("250 2.0.0 Message accepted for delivery", "250 2.0.0"),
        ("421 4.3.2 too many connections right now; please try again later", "421 4.3.2"),
        ("220 mx.example.test ESMTP replygate", "220"),  # the greeting carries no status
        ("354 End data with <CR><LF>.<CR><LF>", "354"),
        ("250 HELP", "250"),
        ("250-2.0.0 a continuation", "250 2.0.0"),
    ],
)
def test_a_reply_is_counted_under_its_code_and_enhanced_code(line: str, key: str) -> None:
    assert replies.reply_key(line) == key


def test_every_catalogue_reply_is_counted_under_its_own_codes() -> None:
    for condition in Condition:
        entry = CATALOGUE[condition]
        line = entry.render("x@reply.test", limit=1000)
        assert replies.reply_key(line) == f"{entry.code} {entry.status}", condition


def test_publishing_adds_what_was_sent_since_the_last_time() -> None:
    found = Instruments()  # metrics off: in memory, read back through a registry of our own
    registry = CollectorRegistry()
    registry.register(found.smtp_replies)
    registry.register(found.smtp_sessions)
    sent = {"550 5.1.1": 2, "220": 1}
    found.publish_smtp(sent, sessions=3, in_flight=4096)
    sent["550 5.1.1"] = 5
    found.publish_smtp(sent, sessions=1, in_flight=0)
    found.publish_smtp(sent, sessions=1, in_flight=0)  # nothing new: nothing added
    value = registry.get_sample_value
    assert value("replygate_smtp_replies_total", {"code": "550", "enhanced": "5.1.1"}) == 5
    assert value("replygate_smtp_replies_total", {"code": "220", "enhanced": ""}) == 1
    assert value("replygate_smtp_sessions_open") == 1


def exported_names() -> set[str]:
    found = Instruments()
    names = set(backlog.NAMES)
    for metric in vars(found).values():
        if isinstance(metric, MetricWrapperBase):
            names.update(metric._name + suffix for suffix in SUFFIXES[metric._type])
    return names


def test_the_alert_rules_parse_and_ask_only_for_exported_metrics() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {"ReplygateInboundQueueStuck", "ReplygateInboundFailed", "ReplygateDeliveryLag"} <= {
        rule["alert"] for rule in rules
    }
    assert "ReplygateRefusalSpike" in {rule["alert"] for rule in rules}
    known = exported_names()
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        used = set(re.findall(r"\breplygate_[a-z_]+", rule["expr"]))
        assert used <= known, (rule["alert"], used - known)
