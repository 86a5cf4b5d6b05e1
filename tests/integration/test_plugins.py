"""Output plug-ins: kinds come from the entry-point group ``dimmy_webhooks.outputs``; the
example package (``examples/dimmy-output-spool``) installed from its local path works by name.

"Installed" here is what ``pip install`` leaves for ``importlib.metadata``: the module and a
``.dist-info`` with ``METADATA`` and ``entry_points.txt`` in a directory on ``sys.path``
(``PYTHONPATH`` for the commands), without building a wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs import OUTPUT_KINDS, OutputContext, discover, parse_outputs, plugins
from dimmy_webhooks.outputs.registry import BUILTIN_KINDS

from ..support.constants import API_KEY, CLI, FORWARD_SECRET, ROOT
from ..support.processes import run

EXAMPLE = ROOT / "examples" / "dimmy-output-spool"


def install(
    site: Path, name: str, version: str, entry_points: dict[str, str], *files: Path
) -> None:
    """What ``pip install`` leaves in ``site``: ``files`` and ``NAME-VERSION.dist-info``."""
    site.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, site / file.name)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{scheme} = {target}\n" for scheme, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{lines}")


def install_example(site: Path) -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    install(
        site,
        project["name"],
        project["version"],
        project["entry-points"][plugins.GROUP],
        EXAMPLE / "dimmy_output_spool.py",
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` to install packages into (discovery read afresh)."""
    where = tmp_path / "site"
    where.mkdir()
    monkeypatch.syspath_prepend(str(where))
    plugins.refresh()
    yield where
    plugins.refresh()
    sys.modules.pop("dimmy_output_spool", None)


def test_the_built_in_kinds_are_declared_as_entry_points_in_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[plugins.GROUP] == {s: target for s, (target, _) in BUILTIN_KINDS.items()}
    for scheme, (target, kind) in BUILTIN_KINDS.items():
        module, _, attribute = target.partition(":")
        assert getattr(sys.modules[module], attribute) is kind, scheme


def test_the_built_in_kinds_are_there_whatever_the_metadata_says(site: Path) -> None:
    assert set(BUILTIN_KINDS) <= set(OUTPUT_KINDS)
    assert all(discover()[scheme].builtin for scheme in BUILTIN_KINDS)


def test_an_installed_plugin_is_a_kind_by_name(site: Path, tmp_path: Path) -> None:
    install_example(site)
    assert "spool" in OUTPUT_KINDS
    found = discover()["spool"]
    assert found.source == "dimmy-output-spool 0.1.0"
    assert found.usage == "spool:DIR"
    [output] = parse_outputs(
        f"spool:{tmp_path / 'out'}", OutputContext(forward_secret=FORWARD_SECRET)
    )
    assert output.name == f"spool:{tmp_path / 'out'}"


def test_a_plugin_may_not_take_a_built_in_scheme_and_a_broken_one_says_why(site: Path) -> None:
    install(site, "evil-http", "1.0", {"http": "evil:KIND"})
    install(site, "broken-kafka", "0.1", {"kafka": "dimmy_no_such_module:KIND"})
    install(site, "not-a-kind", "0.1", {"odd": "json:dumps"})
    found = discover()
    assert found["http"].builtin
    assert "ignored: http is already" in (found["http (evil-http 1.0)"].problem or "")
    with pytest.raises(ConfigError, match=r"'kafka' \(broken-kafka 0.1\): cannot load"):
        parse_outputs("kafka:broker:9092")
    with pytest.raises(ConfigError, match="not an OutputKind"):
        parse_outputs("odd:x")
    # a broken plug-in stops nothing that does not name it
    assert [o.name for o in parse_outputs("console")] == ["console"]


def test_only_kinds_that_take_a_name_take_one(site: Path) -> None:
    install_example(site)
    with pytest.raises(ConfigError, match="only http:URL takes a name") as caught:
        parse_outputs("a=spool:/tmp/x", OutputContext(forward_secret=FORWARD_SECRET))
    assert "amqp:" in str(caught.value)
    context = OutputContext(forward_secret=FORWARD_SECRET)
    [named] = parse_outputs("orders=redis:redis://u:pw@127.0.0.1:9/0?stream=s", context)
    assert named.name == "orders"


def test_a_third_party_output_installed_from_a_local_package_works_by_name(
    tmp_path: Path, fake: FakeDimmy, fake_url: str, sqlite_url: str
) -> None:
    """The example package, installed, is listed by ``dimmy-webhooks outputs`` with its
    package, and ``poll --once`` delivers every item through it, signed, by ``spool:DIR``."""
    site = tmp_path / "site"
    install_example(site)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    listed = run([CLI, "outputs"], tmp_path, PYTHONPATH=path)
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("spool ")]
    assert "spool:DIR" in line
    assert "dimmy-output-spool 0.1.0 (dimmy_output_spool:SPOOL)" in line
    assert "amqp:" in listed.stdout
    assert "built in" in listed.stdout

    start = datetime.now(UTC) - timedelta(seconds=90 * 5 + 60)
    ids = fake.generate_items(5, start=start)
    spool = tmp_path / "spool"
    env = {
        "PYTHONPATH": path,
        "DIMMY_DATABASE_URL": sqlite_url,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_FORWARD_SECRET": FORWARD_SECRET,
        "DIMMY_OUTPUTS": f"spool:{spool}",
        "DIMMY_RECONCILE_GRACE_SECONDS": "0",
    }
    proc = run([CLI, "poll", "--once"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    files = sorted(spool.glob("*.json"))
    assert len(files) == len(ids)
    delivered = set()
    for file in files:
        record = json.loads(file.read_text())
        envelope = Webhook(FORWARD_SECRET).verify(record["body"], record["headers"])
        assert file.stem == record["headers"]["webhook-id"]
        delivered.add(envelope["data"]["id"])
    assert delivered == set(ids)
