"""deploy/prometheus: the alerting rules parse, name only metrics raftfl exports, and (with
Debian's `prometheus` package, which scripts/setup.sh installs) pass `promtool check rules`,
their own `promtool test rules` cases, and the example scrape config `promtool check config`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from raftfl import tls
from raftfl.ops import metrics

pytestmark = pytest.mark.unit

DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES, CASES, CONFIG = DIR / "raftfl-alerts.yml", DIR / "raftfl-alerts.test.yml", DIR / "prometheus.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian's prometheus package; scripts/setup.sh as root)")


def promtool(*args: str, cwd: Path = DIR) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_parse_with_the_expected_alerts() -> None:
    doc = yaml.safe_load(RULES.read_text())
    [group] = doc["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert group["name"] == "raftfl"
    assert {"RaftflNoAggregator", "RaftflFrequentFailovers", "RaftflQuorumAtRisk"} <= set(alerts)
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_the_rules_use_only_exported_metrics() -> None:
    exported = set(re.findall(r'"(raftfl_[a-z_]+)"', Path(metrics.__file__).read_text()))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    for name in set(re.findall(r"raftfl_[a-z_]+", RULES.read_text())):
        base = next((name[: -len(s)] for s in suffixes if name.endswith(s)), name)
        assert name in exported or base in exported, name


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_cases() -> None:
    promtool("check", "rules", RULES.name)
    promtool("test", "rules", CASES.name)


@needs_promtool
def test_promtool_checks_the_example_scrape_config(tmp_path: Path) -> None:
    """The example's certificate paths point at a real operator bundle here."""
    tls.init_ca(tmp_path / "ca", "prod")
    bundle = tls.issue_bundle(tmp_path / "ca", "prometheus", "operator-prometheus", [])
    config = yaml.safe_load(CONFIG.read_text())
    [job] = config["scrape_configs"]
    job["tls_config"] = {"ca_file": str(bundle / "ca.crt"), "cert_file": str(bundle / "tls.crt"),
                         "key_file": str(bundle / "tls.key")}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, tmp_path / RULES.name)
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)
