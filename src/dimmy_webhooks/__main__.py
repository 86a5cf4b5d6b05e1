"""``python -m dimmy_webhooks``: the same command as ``dimmy-webhooks``."""

from .cli import main

main(prog_name="dimmy-webhooks")
