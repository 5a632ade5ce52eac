"""The example alert rules (``docs/alerts.yml``) as Prometheus reads them: ``promtool
check rules``, then ``promtool test rules`` on series shaped like an incident, so
an alert that could never fire (or fires on a quiet day) fails here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ALERTS = Path(__file__).resolve().parents[3] / "docs" / "alerts.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install the prometheus package (.ci/system-deps.sh)"
    return found


def annotations(alert: str, **summary: str) -> dict[str, str]:
    """The rule's annotations with its summary as rendered for the test's values."""
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                return {**rule["annotations"], **summary}
    raise AssertionError(f"no alert {alert} in {ALERTS}")


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_fire_on_an_incident_and_not_before(tmp_path: Path) -> None:
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    stuck = annotations(
        "ReplygateInboundQueueStuck", summary="Accepted replies have waited 21m 40s to be filed"
    )
    spike = annotations("ReplygateRefusalSpike")
    lag = annotations(
        "ReplygateDeliveryLag", summary="A notification has waited 37m 0s to be delivered"
    )
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Nothing filed from minute 2 on: the oldest queued mail ages.
                    {
                        "series": 'replygate_inbound_oldest_seconds{instance="a",status="queued"}',
                        "values": "0 60 700+60x20",
                    },
                    # A refusal a minute for two days, then two a second.
                    {
                        "series": 'replygate_smtp_replies_total{instance="a",code="550",'
                        'enhanced="5.1.1"}',
                        "values": "0+1x2900 2901+120x30",
                    },
                    # The smarthost stops taking mail at minute 5.
                    {
                        "series": 'replygate_outbox_oldest_seconds{instance="a",status="queued"}',
                        "values": "0x4 60+60x40",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "ReplygateInboundQueueStuck"},
                    {
                        "eval_time": "12m",
                        "alertname": "ReplygateInboundQueueStuck",
                        "exp_alerts": [
                            {
                                "exp_labels": {"instance": "a", "severity": "page"},
                                "exp_annotations": stuck,
                            }
                        ],
                    },
                    {"eval_time": "2800m", "alertname": "ReplygateRefusalSpike"},
                    {
                        "eval_time": "2925m",
                        "alertname": "ReplygateRefusalSpike",
                        "exp_alerts": [
                            {
                                "exp_labels": {"instance": "a", "severity": "ticket"},
                                "exp_annotations": spike,
                            }
                        ],
                    },
                    {"eval_time": "15m", "alertname": "ReplygateDeliveryLag"},
                    {
                        "eval_time": "41m",
                        "alertname": "ReplygateDeliveryLag",
                        "exp_alerts": [
                            {
                                "exp_labels": {"instance": "a", "severity": "page"},
                                "exp_annotations": lag,
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
