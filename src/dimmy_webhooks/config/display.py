"""How the settings are shown: the ``.env`` template (``dimmy-webhooks config --example``) and
the secrets ``dimmy-webhooks config`` never prints.
"""

from __future__ import annotations

import textwrap

from dimmy_webhooks.config.settings import Settings

SECRET_SETTINGS = frozenset(
    {"webhook_secret", "api_key", "admin_token", "forward_secret", "metrics_token", "alert_url"}
)
"""Settings never printed (``config`` shows them as set or not)."""


def env_example() -> str:
    """A ``.env`` template: every setting commented out at its default, with its description."""
    lines = [
        "# dimmy-webhooks settings: copy to .env (next to where you run the service) and",
        "# uncomment what you change. The environment wins over .env. All settings, with what",
        "# they do: docs/configuration.md. `dimmy-webhooks config` prints the effective values.",
    ]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default)
        if isinstance(field.default, bool):
            default = default.lower()
        about = textwrap.wrap(
            field.description or "", 96, initial_indent="# ", subsequent_indent="# "
        )
        lines += ["", *about, f"# DIMMY_{name.upper()}={default}"]
    return "\n".join(lines) + "\n"
