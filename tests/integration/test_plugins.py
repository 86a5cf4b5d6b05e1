"""Output plug-ins: kinds come from the entry-point group ``dimmy_webhooks.outputs``; the
example package (``examples/dimmy-output-spool``) installed from its local path works by name;
a plug-in implementing the bare ``Output`` protocol is paused after repeated failure like
``http:``.

"Installed" here is what ``pip install`` leaves for ``importlib.metadata``: the module and a
``.dist-info`` with ``METADATA`` and ``entry_points.txt`` in a directory on ``sys.path``
(``PYTHONPATH`` for the commands), without building a wheel.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.observe.health import check_readiness
from dimmy_webhooks.observe.overview import Status, take_overview
from dimmy_webhooks.outputs import (
    OUTPUT_KINDS,
    DestinationPaused,
    MessageOutput,
    OutputContext,
    deliver_within,
    discover,
    parse_outputs,
    plugins,
)
from dimmy_webhooks.outputs.builtin import BUILTIN_KINDS
from dimmy_webhooks.outputs.http.limits import FAILURES_BEFORE_PAUSE
from dimmy_webhooks.outputs.registry import PausingOutput
from dimmy_webhooks.pipeline.jobs import WorkerPolicy
from dimmy_webhooks.pipeline.worker import Worker
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.client import DimmyClient

from ..support.builders import scanned_event
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
    assert isinstance(output, MessageOutput)  # it pauses itself: not wrapped


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


FLAKY = textwrap.dedent(
    """
    import asyncio, time
    from dimmy_webhooks.outputs import DestinationPaused, OutputKind

    calls = []  # (time, item id, outcome)
    failures = 0  # how many calls still fail
    hang = False
    busy = False  # the plug-in pauses itself

    class FlakyOutput:  # the bare Output protocol: no pause of its own
        max_attempts = None
        delivery_timeout = None

        def __init__(self, name):
            self.name = name

        async def deliver(self, item, idempotency_key):
            global failures
            if hang:
                await asyncio.sleep(3600)
            if busy:
                raise DestinationPaused("busy", time.time() + 1)
            if failures > 0:
                failures -= 1
                calls.append((time.time(), item.id, "failed"))
                raise ConnectionError("the other side is down")
            calls.append((time.time(), item.id, "delivered"))
            return None

        async def aclose(self):
            return None

        def problems(self):
            return []

    FLAKY = OutputKind("flaky:NAME", lambda argument, context: FlakyOutput(f"flaky:{argument}"))
    """
)


@pytest.fixture
def flaky(site: Path) -> Iterator[Any]:
    """The plug-in ``flaky:NAME`` installed: its module, to set how it fails and read its calls."""
    (site / "dimmy_output_flaky.py").write_text(FLAKY)
    install(site, "dimmy-output-flaky", "0.1", {"flaky": "dimmy_output_flaky:FLAKY"})
    plugins.refresh()
    import dimmy_output_flaky  # type: ignore[import-not-found]

    yield dimmy_output_flaky
    sys.modules.pop("dimmy_output_flaky", None)


async def test_a_bare_protocol_plugin_is_paused_after_repeated_failure_and_loses_nothing(
    flaky: Any, fake: FakeDimmy, fake_url: str, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five failed deliveries in a row pause the plug-in like an ``http:`` output: it is not
    called during the pause, the overview and ``/readyz`` say so, and once it answers again
    every item arrives exactly once, none of them dead."""
    pause = 1.0
    monkeypatch.setattr("dimmy_webhooks.outputs.registry.PAUSE_SECONDS", pause)
    flaky.failures = FAILURES_BEFORE_PAUSE
    [output] = parse_outputs("flaky:wms")
    assert isinstance(output, PausingOutput)
    assert output.name == "flaky:wms"
    ids = fake.generate_items(FAILURES_BEFORE_PAUSE)
    client = DimmyClient(fake_url, API_KEY, timeout=2, concurrency=8, rate_limit=10_000)
    policy = WorkerPolicy(
        concurrency=8,
        lease_seconds=5,
        retry_base_seconds=0.02,
        retry_max_seconds=0.1,
        poll_seconds=0.05,
    )
    worker = Worker(sqlite_store, client, [output], policy)
    await sqlite_store.insert_event(scanned_event("msg_flaky", ids, headers={}))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 30
        while len(flaky.calls) < FAILURES_BEFORE_PAUSE:
            assert time.monotonic() < deadline, flaky.calls
            await asyncio.sleep(0.01)
        status = Status(
            at=time.time(),
            started_at=time.time(),
            reconcile_grace=0,
            outputs=(output.name,),
            problems=tuple(output.problems()),
        )
        assert [p for p in status.problems if "flaky:wms is failing" in p and "paused" in p]
        overview = await take_overview(sqlite_store, status)
        assert overview.problems == list(status.problems)
        [destination] = overview.destinations
        assert destination.failing_since is not None
        readiness = await check_readiness(sqlite_store, status)
        assert readiness.status == "degraded"
        assert readiness.problems == ["an output is failing: its deliveries are paused"]
        while {i for _, i, outcome in flaky.calls if outcome == "delivered"} != set(ids):
            assert time.monotonic() < deadline, flaky.calls
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await client.aclose()
        await output.aclose()
    failed = [at for at, _, outcome in flaky.calls if outcome == "failed"]
    delivered = [at for at, _, outcome in flaky.calls if outcome == "delivered"]
    assert len(failed) == FAILURES_BEFORE_PAUSE
    assert min(delivered) - max(failed) >= pause - 0.05  # not called during the pause
    assert sorted(i for _, i, outcome in flaky.calls if outcome == "delivered") == sorted(ids)
    assert output.problems() == []
    stats = (await sqlite_store.stats(time.time())).jobs
    assert not stats.get("dead"), stats
    assert not stats.get("pending"), stats


async def test_no_answer_in_time_counts_and_the_plugins_own_pause_does_not(flaky: Any) -> None:
    """A delivery the worker's time limit cuts short is a failure towards the pause; a
    ``DestinationPaused`` the plug-in raises itself is not; a success starts the count again."""
    now = [1000.0]
    [built] = parse_outputs("flaky:slow")
    assert isinstance(built, PausingOutput)
    output = PausingOutput(built.output, clock=lambda: now[0])
    item = SimpleNamespace(id="i1")
    flaky.hang = True
    for _ in range(FAILURES_BEFORE_PAUSE - 1):
        with pytest.raises(Exception, match="no answer within"):
            await deliver_within(output, item, "key", 0.01)  # type: ignore[arg-type]
    flaky.hang, flaky.busy = False, True
    for _ in range(FAILURES_BEFORE_PAUSE):
        with pytest.raises(DestinationPaused, match="busy"):
            await deliver_within(output, item, "key", 1)  # type: ignore[arg-type]
    assert output.problems() == []
    flaky.busy = False
    await output.deliver(item, "key")  # type: ignore[arg-type]  # a success: counting anew
    flaky.hang = True
    for _ in range(FAILURES_BEFORE_PAUSE):
        assert output.problems() == []
        with pytest.raises(Exception, match="no answer within"):
            await deliver_within(output, item, "key", 0.01)  # type: ignore[arg-type]
    flaky.hang = False
    calls = len(flaky.calls)
    with pytest.raises(DestinationPaused) as paused:
        await deliver_within(output, item, "key", 1)  # type: ignore[arg-type]
    assert paused.value.until == now[0] + 10
    assert len(flaky.calls) == calls  # not called while paused
    assert "no answer in time" in output.problems()[0]
    now[0] = paused.value.until
    await deliver_within(output, item, "key", 1)  # type: ignore[arg-type]  # the probe
    assert output.problems() == []
