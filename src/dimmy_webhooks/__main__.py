"""``python -m dimmy_webhooks``: the same command as ``dimmy-webhooks``."""

from dimmy_webhooks.cli import main

main(prog_name="dimmy-webhooks")
