"""The alert rules, Alertmanager config, runbook and dashboards ship in the wheel; ``spendwatch assets`` writes them.

The first test builds a real, non-editable wheel of this checkout, installs it into a fresh directory and runs the
installed ``spendwatch assets`` from outside the repository: what it writes must be the repository's files, accepted
by promtool and amtool, and the demo must find its rules in the installed package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spendwatch.cli.commands_assets import placeholders

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "alert_rules"
SHIPPED = {
    "alert_rules": ["alertmanager.yml", "runbook.md", "spendwatch.alerts.yml", "spendwatch.rules.yml"],
    "dashboards": ["budget-overview.json", "cost-breakdown.json", "operations.json"],
}
RUNBOOK_BASE = "https://wiki.example.org/ops/spendwatch/runbook.md"


def spendwatch(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def written(dest: Path) -> dict[str, list[str]]:
    return {folder: sorted(path.name for path in (dest / folder).iterdir()) for folder in SHIPPED}


def alerts_of(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A directory holding spendwatch installed from a freshly built, non-editable wheel of this checkout."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], capture_output=True)
    assert build.returncode == 0, build.stderr.decode()[-2000:]
    (wheel,) = wheels.glob("spendwatch-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True
    )
    assert install.returncode == 0, install.stderr.decode()[-2000:]
    return target


def test_the_installed_wheel_writes_the_repositorys_rules_config_runbook_and_dashboards(installed_wheel, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}  # the installed copy, ahead of the editable checkout
    dest = tmp_path / "monitoring"

    done = spendwatch("assets", "--dest", str(dest), cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert written(dest) == SHIPPED
    for folder, names in SHIPPED.items():
        for name in names:
            assert (dest / folder / name).read_text() == (ROOT / folder / name).read_text(), name
    assert "placeholders (REPLACE, example.com) to fill in" in done.stdout


def test_the_demo_reads_its_rules_from_the_installed_package(installed_wheel, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    code = "from spendwatch.demo.alerting import alert_rules_directory, unavailable_reason as r; "
    code += "print(alert_rules_directory()); print(r())"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)

    directory, reason = done.stdout.splitlines()
    assert Path(directory) == installed_wheel / "spendwatch" / "alert_rules", done.stderr
    assert reason == "None" or "not on PATH" in reason


def test_written_files_pass_promtool_and_amtool(tmp_path, promtool_binary, amtool_binary):
    spendwatch("assets", "--dest", str(tmp_path), "--runbook-base", RUNBOOK_BASE, cwd=tmp_path)
    rules = [str(tmp_path / "alert_rules" / name) for name in ("spendwatch.rules.yml", "spendwatch.alerts.yml")]

    checked = subprocess.run([promtool_binary, "check", "rules", *rules], capture_output=True, text=True)
    config = subprocess.run(
        [amtool_binary, "check-config", str(tmp_path / "alert_rules" / "alertmanager.yml")], capture_output=True
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert config.returncode == 0


def test_runbook_base_makes_every_runbook_url_an_absolute_link(tmp_path):
    done = spendwatch("assets", "--dest", str(tmp_path), "--runbook-base", RUNBOOK_BASE, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    shipped_alerts = alerts_of(ALERT_RULES / "spendwatch.alerts.yml")
    shipped = {rule["alert"]: rule["annotations"]["runbook_url"] for rule in shipped_alerts}
    rewritten = alerts_of(tmp_path / "alert_rules" / "spendwatch.alerts.yml")
    assert {rule["alert"] for rule in rewritten} == set(shipped)
    for rule in rewritten:
        _, _, anchor = shipped[rule["alert"]].partition("#")
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{anchor}"


def test_a_relative_runbook_base_is_refused(tmp_path):
    done = spendwatch("assets", "--dest", str(tmp_path), "--runbook-base", "runbook.md", cwd=tmp_path)

    assert done.returncode == 2
    assert "--runbook-base must be an absolute URL" in done.stderr
    assert not (tmp_path / "alert_rules").exists()


def test_files_already_there_are_kept_unless_forced(tmp_path):
    spendwatch("assets", "--dest", str(tmp_path), cwd=tmp_path)
    config = tmp_path / "alert_rules" / "alertmanager.yml"
    config.write_text("# mine\n")

    kept = spendwatch("assets", "--dest", str(tmp_path), cwd=tmp_path)
    assert config.read_text() == "# mine\n"
    assert f"kept (exists; --force to overwrite): {config}" in kept.stdout

    spendwatch("assets", "--dest", str(tmp_path), "--force", cwd=tmp_path)
    assert config.read_text() == (ALERT_RULES / "alertmanager.yml").read_text()


def test_check_lists_every_placeholder_left_in_the_shipped_config(tmp_path):
    spendwatch("assets", "--dest", str(tmp_path), cwd=tmp_path)

    done = spendwatch("assets", "--check", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 1
    flagged = re.findall(r"alertmanager\.yml:(\d+): placeholder left in: (.*)", done.stdout)
    settings = sorted(line.split(":")[0].lstrip("- ") for _, line in flagged)
    assert settings == ["slack_api_url", "smtp_from", "smtp_smarthost", "to", "to", "url", "url"]


def test_check_passes_a_filled_in_config_whose_replace_comments_are_still_there(tmp_path):
    shipped = (ALERT_RULES / "alertmanager.yml").read_text()
    filled = shipped.replace("example.com", "corp.internal").replace("REPLACE/WITH/YOUR-WEBHOOK", "T0/B0/secret")
    (tmp_path / "alertmanager.yml").write_text(filled)

    done = spendwatch("assets", "--check", str(tmp_path / "alertmanager.yml"), cwd=tmp_path)

    assert "# REPLACE" in filled
    assert done.returncode == 0, done.stdout
    assert placeholders(filled) == []


def test_check_of_a_path_without_a_config_is_a_usage_error(tmp_path):
    done = spendwatch("assets", "--check", str(tmp_path), cwd=tmp_path)

    assert done.returncode == 2
    assert "no alertmanager.yml at" in done.stderr


def test_version_is_the_installed_distributions(tmp_path):
    from importlib.metadata import version

    done = spendwatch("--version", cwd=tmp_path)

    assert done.returncode == 0
    assert done.stdout.strip() == f"spendwatch {version('spendwatch')}"
