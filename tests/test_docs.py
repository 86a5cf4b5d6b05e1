"""The documentation stays honest: every setting and command is documented where users look."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from dimmy_webhooks.cli import main
from dimmy_webhooks.config import Settings

from .support.constants import CLI, ROOT
from .support.processes import run


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


def cli_commands() -> list[str]:
    """Every command of the CLI as typed after ``dimmy-webhooks`` (``quarantine release``),
    read from the click group itself so a new command cannot be left out."""
    found: list[str] = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in sorted(group.commands.items()):
            if command.hidden:
                continue
            found.append(prefix + name)
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")

    walk(main, "")
    return found


def documented(command: str) -> bool:
    """Whether the README, or else a page of ``docs/``, shows ``dimmy-webhooks <command>``: a
    subcommand on a line that shows its group (``dimmy-webhooks quarantine list | release``)."""
    group, _, sub = command.rpartition(" ")
    texts = [(ROOT / "README.md").read_text()]
    texts += [page.read_text() for page in sorted((ROOT / "docs").glob("*.md"))]
    for text in texts:
        if not group and f"dimmy-webhooks {command}" in text:
            return True
        if group and any(
            f"dimmy-webhooks {group}" in line and sub in line.split(f"dimmy-webhooks {group}")[1]
            for line in text.splitlines()
        ):
            return True
    return False


def test_the_cli_has_the_commands_users_know() -> None:
    assert {"serve", "worker", "poll", "backfill", "quarantine", "token"} <= set(cli_commands())


@pytest.mark.parametrize("command", cli_commands())
def test_every_command_has_help_and_is_documented(command: str, tmp_path: Path) -> None:
    result = run([CLI, *command.split(), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert documented(command), f"dimmy-webhooks {command} is in neither README.md nor docs/"
