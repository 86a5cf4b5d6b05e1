"""The documentation stays honest: every setting and command is documented where users look."""

from __future__ import annotations

from pathlib import Path

import pytest

from dimmy_webhooks.config import Settings

from .support.constants import CLI
from .support.processes import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(name: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    row = next(
        (line for line in text.splitlines() if line.startswith(f"| `DIMMY_{name.upper()}` |")),
        None,
    )
    assert row is not None, f"DIMMY_{name.upper()} missing from docs/configuration.md"
    default = Settings.model_fields[name].default
    shown = "(unset)" if default is None else str(default)
    assert f"`{shown}`" in row


@pytest.mark.parametrize(
    "command",
    [
        "serve",
        "worker",
        "migrate",
        "send",
        "replay",
        "fake-api",
        "demo",
        "config",
        "export-sqlite-to-postgres",
    ],
)
def test_every_command_has_help_and_is_in_the_readme(command: str, tmp_path: Path) -> None:
    result = run([CLI, command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert f"dimmy-webhooks {command}" in (ROOT / "README.md").read_text()
