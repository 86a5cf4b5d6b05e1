"""How the package is laid out for its users: the commands' imports, ``python -m``, the extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .support.constants import SECRET
from .support.processes import run

WEB_STACK = ("fastapi", "starlette", "uvicorn")


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", textwrap.dedent(code)], cwd, **env)


def test_the_worker_command_runs_without_the_web_stack(tmp_path: Path) -> None:
    """``dimmy-webhooks worker`` starts, works and stops without importing FastAPI, Starlette or
    uvicorn: a worker machine needs none of them."""
    proc = run_python(
        f"""
        import os, signal, sys, threading
        from dimmy_webhooks.cli import main
        threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        try:
            main(["worker"])
        except SystemExit as exc:
            print("exit", exc.code)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {WEB_STACK!r})
        print("web stack:", ",".join(loaded) or "none")
        """,
        tmp_path,
        DIMMY_DATABASE_URL=f"sqlite:///{tmp_path / 'w.sqlite3'}",
        DIMMY_API_KEY="key",
        DIMMY_API_URL="http://127.0.0.1:9",
    )
    assert "worker started" in proc.stderr, proc.stderr
    assert "worker stopped" in proc.stderr, proc.stderr
    assert "web stack: none" in proc.stdout, proc.stdout + proc.stderr


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    proc = run([sys.executable, "-m", "dimmy_webhooks", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: dimmy-webhooks" in proc.stdout
    for command in ("serve", "worker", "demo", "migrate", "send", "replay"):
        assert command in proc.stdout


BLOCK_PSYCOPG = """
    import sys

    class NoPsycopg:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("psycopg", "psycopg_pool"):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, NoPsycopg())
    from dimmy_webhooks.cli import main
    main(sys.argv[1:])
"""


def test_a_postgres_url_without_the_extra_names_the_extra(tmp_path: Path) -> None:
    """On a SQLite-only install (no ``[postgres]`` extra) a PostgreSQL URL is one clear line."""
    for args in (["migrate"], ["serve"], ["worker"], ["config"]):
        proc = run(
            [sys.executable, "-c", textwrap.dedent(BLOCK_PSYCOPG), *args],
            tmp_path,
            DIMMY_DATABASE_URL="postgresql://postgres@127.0.0.1:9/none",
            DIMMY_WEBHOOK_SECRET=SECRET,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "DIMMY_DATABASE_URL" in proc.stderr
        assert "pip install 'dimmy-webhooks[postgres]'" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_env_example_is_every_setting_at_its_default(tmp_path: Path) -> None:
    """``.env.example`` is what ``dimmy-webhooks config --example`` prints, and copied to .env
    as it is (every line commented out) it changes nothing."""
    from dimmy_webhooks.config import Settings, env_example, load_settings

    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    assert example == env_example()
    for name in Settings.model_fields:
        assert f"# DIMMY_{name.upper()}=" in example
    (tmp_path / ".env").write_text(example)
    assert load_settings(tmp_path / ".env") == load_settings(None)


def test_the_systemd_units_raise_the_open_file_limit() -> None:
    """Under systemd's default (1,024 files) the default connection cap would shrink to what is
    left after the database, outputs and API connections; the shipped units lift the limit so
    that serve gets the full default cap and the worker its API connections."""
    from dimmy_webhooks.config import load_settings
    from dimmy_webhooks.intake.httpserver import CONNECTION_CEILING, connection_cap

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    units = sorted(deploy.glob("*.service"))
    assert len(units) == 2
    for unit in units:
        lines = [line.strip() for line in unit.read_text().splitlines()]
        [limit] = [line.partition("=")[2] for line in lines if line.startswith("LimitNOFILE=")]
        settings = load_settings(None, api_concurrency=1024)  # the most the worker may open
        assert connection_cap(settings, nofile=int(limit)) == CONNECTION_CEILING, unit.name
