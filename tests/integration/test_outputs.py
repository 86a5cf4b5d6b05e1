"""Outputs: console, JSON Lines, Python callables, and the DIMMY_OUTPUTS syntax."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.items import to_api_dict
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.outputs import (
    OUTPUT_KINDS,
    ConsoleOutput,
    JsonlOutput,
    Output,
    PythonOutput,
    deliver_within,
    idempotency_key,
    parse_outputs,
)

from ..support.builders import stored_item
from ..support.processes import clean_env, wait_until

# the helper module the ``python:`` outputs name: "tests.support.handlers"
HANDLERS = "tests.support.handlers"
handlers = importlib.import_module(HANDLERS)


def make_item(item_id: str = "6592008029c8c3e4dc76256c", *, pretty: bool = False) -> StoredItem:
    doc = {
        "_id": item_id,
        "updated_at": "2026-01-05T09:00:05Z",
        "note": "Größe ✓",
        "dimensioning": [{"dimensions": {"width": 0.31, "height": 0.22, "depth": 0.15}}],
        "barcode_scanning": [{"barcodes": [{"value": "8712345678906"}]}],
    }
    return stored_item(doc=doc, indent=2 if pretty else None, fetched_at=1767603606.0)


@pytest.fixture(autouse=True)
def _clear_handler_calls() -> Iterator[None]:
    handlers.calls.clear()
    handlers.threads.clear()
    handlers.release.clear()
    handlers.raised.clear()
    yield
    handlers.release.set()  # whatever a test left blocked returns now
    handlers.calls.clear()
    handlers.threads.clear()
    handlers.raised.clear()


# --- idempotency keys ------------------------------------------------------------------------


def test_idempotency_key_is_stable_and_prefixed() -> None:
    key = idempotency_key("item", "2026-01-05T09:00:05.000000Z#abcd", "console")
    assert re.fullmatch(r"dmy_[0-9a-f]{32}", key)
    assert key == idempotency_key("item", "2026-01-05T09:00:05.000000Z#abcd", "console")


def test_idempotency_key_differs_per_item_version_and_output() -> None:
    keys = {
        idempotency_key("a", "v1", "console"),
        idempotency_key("b", "v1", "console"),
        idempotency_key("a", "v2", "console"),
        idempotency_key("a", "v1", "jsonl:/x"),
        idempotency_key("a", "v1#", "console"),
        idempotency_key("a#v1", "", "console"),
    }
    assert len(keys) == 6


# --- console ---------------------------------------------------------------------------------


async def test_console_prints_header_then_json_on_one_line() -> None:
    stream = io.StringIO()
    output = ConsoleOutput(stream)
    item = make_item(pretty=True)
    await output.deliver(item, "dmy_key")
    await output.aclose()
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"item {item.id} (dmy_key)"
    assert len(lines) == 2
    assert json.loads(lines[1]) == item.raw_json()
    assert lines[1].isascii()
    assert output.name == "console"


async def test_console_defaults_to_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    await ConsoleOutput().deliver(make_item("abc"), "k1")
    out = capsys.readouterr().out
    assert out.startswith("item abc (k1)\n")
    assert json.loads(out.splitlines()[1])["_id"] == "abc"


async def test_console_write_failure_is_an_output_error() -> None:
    stream = io.StringIO()
    stream.close()
    with pytest.raises(OutputError, match="console"):
        await ConsoleOutput(stream).deliver(make_item(), "k")


# --- JSON Lines ------------------------------------------------------------------------------


async def test_jsonl_appends_one_complete_record_per_delivery(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "items.jsonl"
    output = JsonlOutput(path, clock=lambda: 1767603610.5)
    first, second = make_item("a1"), make_item("b2", pretty=True)
    await output.deliver(first, "k1")
    await output.deliver(second, "k2")
    await output.aclose()

    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert len(text.splitlines()) == 2
    records = JsonlOutput.read(path)
    assert [r["idempotency_key"] for r in records] == ["k1", "k2"]
    assert records[0] == {
        "idempotency_key": "k1",
        "item_id": "a1",
        "version": first.version,
        "delivered_at": "2026-01-05T09:00:10.500000Z",
        "item": to_api_dict(first),
    }
    assert records[1]["item"]["raw"]["note"] == "Größe ✓"
    assert output.name == f"jsonl:{path}"


async def test_jsonl_writes_the_raw_document_as_fetched(tmp_path: Path) -> None:
    """The item's ``raw`` goes into the line as Dimmy wrote it: numbers and escapes keep their
    spelling (``1.50``, ``\\u00e9``), and its line breaks become spaces, so the line stays one."""
    raw = '{\n  "_id": "a1",\r\n  "weight": 1.50,\n  "note": "caf\\u00e9 \\n"\n}'
    fetched = replace(make_item("a1"), raw=raw)
    path = tmp_path / "items.jsonl"
    output = JsonlOutput(path)
    await output.deliver(fetched, "k1")
    await output.aclose()
    [line] = path.read_text(encoding="utf-8").splitlines()
    assert line.endswith(
        ',"raw":{   "_id": "a1",    "weight": 1.50,   "note": "caf\\u00e9 \\n" }}}'
    )
    [record] = JsonlOutput.read(path)
    assert record["item"]["raw"] == {"_id": "a1", "weight": 1.5, "note": "café \n"}
    assert record["item"]["id"] == "a1"


async def test_jsonl_starts_a_new_line_after_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"idempotency_key":"k0","item_id":"a"}\n{"idempotency_key":"k1","ite')
    output = JsonlOutput(path)
    await output.deliver(make_item("c3"), "k2")
    await output.deliver(make_item("d4"), "k3")
    await output.aclose()

    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert lines[1] == '{"idempotency_key":"k1","ite'
    assert [r["idempotency_key"] for r in JsonlOutput.read(path)] == ["k0", "k2", "k3"]


async def test_jsonl_adds_no_blank_line_to_a_clean_file(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    output = JsonlOutput(path)
    await output.deliver(make_item("a"), "k1")
    await output.aclose()
    reopened = JsonlOutput(path)
    await reopened.deliver(make_item("b"), "k2")
    await reopened.aclose()
    assert "\n\n" not in path.read_text()
    assert len(JsonlOutput.read(path)) == 2


async def test_jsonl_concurrent_deliveries_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    output = JsonlOutput(path)
    await asyncio.gather(*(output.deliver(make_item(f"i{n}"), f"k{n}") for n in range(40)))
    await output.aclose()
    lines = path.read_text().splitlines()
    assert len(lines) == 40
    assert sorted(json.loads(line)["item_id"] for line in lines) == sorted(
        f"i{n}" for n in range(40)
    )


def test_jsonl_outputs_on_separate_threads_share_a_file(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"

    def run(prefix: str) -> None:
        async def go() -> None:
            output = JsonlOutput(path)
            for n in range(10):
                await output.deliver(make_item(f"{prefix}{n}"), f"{prefix}{n}")
            await output.aclose()

        asyncio.run(go())

    threads = [threading.Thread(target=run, args=(p,)) for p in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(JsonlOutput.read(path)) == 40
    assert len(path.read_text().splitlines()) == 40


async def test_jsonl_reopens_after_aclose(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    output = JsonlOutput(path)
    await output.deliver(make_item("a"), "k1")
    await output.aclose()
    await output.deliver(make_item("b"), "k2")
    await output.aclose()
    await output.aclose()
    assert [r["item_id"] for r in JsonlOutput.read(path)] == ["a", "b"]


async def test_jsonl_unwritable_path_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    output = JsonlOutput(blocker / "items.jsonl")
    with pytest.raises(OutputError, match="jsonl:"):
        await output.deliver(make_item(), "k")
    await output.aclose()


async def test_jsonl_any_write_failure_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only OSError: whatever the write raises fails the deliveries waiting on it (they
    would otherwise wait for ever on a writer that is gone) and the next write starts afresh."""
    output = JsonlOutput(tmp_path / "items.jsonl")

    def broken(data: bytes) -> None:
        raise RuntimeError("driver bug")

    monkeypatch.setattr(output, "_append", broken)
    with pytest.raises(OutputError, match="driver bug"):
        await asyncio.wait_for(output.deliver(make_item("a"), "k1"), 5)
    monkeypatch.undo()
    await asyncio.wait_for(output.deliver(make_item("b"), "k2"), 5)
    await output.aclose()
    assert [r["item_id"] for r in JsonlOutput.read(tmp_path / "items.jsonl")] == ["b"]


def test_jsonl_name_is_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = JsonlOutput("out/../items.jsonl")
    assert output.name == f"jsonl:{tmp_path / 'items.jsonl'}"
    assert os.path.isabs(output.name.removeprefix("jsonl:"))


def test_jsonl_read_skips_garbage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    assert JsonlOutput.read(path) == []
    path.write_text('{"a": 1}\n\n[1, 2]\nnot json\n{"b": 2}\n{"c":')
    assert JsonlOutput.read(path) == [{"a": 1}, {"b": 2}]


# --- Python callables ------------------------------------------------------------------------


async def test_python_output_calls_sync_function_in_a_thread() -> None:
    output = PythonOutput(f"{HANDLERS}:record_sync")
    item = make_item()
    await output.deliver(item, "k1")
    await output.aclose()
    assert handlers.calls == [("sync", to_api_dict(item), "k1")]
    assert len(handlers.threads) == 1
    assert handlers.threads[0] != threading.current_thread().name
    assert output.name == f"python:{HANDLERS}:record_sync"


@pytest.mark.parametrize(
    ("target", "label"),
    [("record_async", "async"), ("async_object", "async_object"), ("Handlers.static", "static")],
)
async def test_python_output_awaits_async_callables(target: str, label: str) -> None:
    output = PythonOutput(f"{HANDLERS}:{target}")
    item = make_item()
    await output.deliver(item, "k9")
    assert handlers.calls == [(label, to_api_dict(item), "k9")]


async def test_python_output_passes_a_fresh_dict_each_time() -> None:
    output = PythonOutput(f"{HANDLERS}:record_sync")
    item = make_item()
    await output.deliver(item, "k1")
    await output.deliver(item, "k1")
    first, second = handlers.calls[0][1], handlers.calls[1][1]
    assert first == second
    assert first is not second


async def test_python_output_failure_is_an_output_error() -> None:
    output = PythonOutput(f"{HANDLERS}:fail")
    with pytest.raises(OutputError, match="RuntimeError: the WMS is down") as caught:
        await output.deliver(make_item(), "k1")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert len(handlers.calls) == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_for_dimmy_tests:func", "cannot import"),
        (f"{HANDLERS}:missing", "no attribute missing"),
        (f"{HANDLERS}:Handlers.missing", "no attribute Handlers.missing"),
        (f"{HANDLERS}:NOT_CALLABLE", "not callable"),
        (HANDLERS, "expected module:function"),
        (":func", "expected module:function"),
        (f"{HANDLERS}:", "expected module:function"),
    ],
)
def test_python_output_bad_target_is_a_config_error(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PythonOutput(target)


def test_python_output_module_failing_on_import_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dimmy_broken_handler_module.py").write_text("raise KeyError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="raised KeyError"):
        PythonOutput("dimmy_broken_handler_module:handle")


# --- DIMMY_OUTPUTS ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "   ", ",", " , ,"])
def test_empty_spec_means_no_outputs(spec: str) -> None:
    assert parse_outputs(spec) == []


def test_spec_builds_every_kind_in_order(tmp_path: Path) -> None:
    spec = f" console , jsonl:{tmp_path}/items.jsonl,, python:{HANDLERS}:record_sync "
    outputs = parse_outputs(spec)
    assert [type(o) for o in outputs] == [ConsoleOutput, JsonlOutput, PythonOutput]
    assert [o.name for o in outputs] == [
        "console",
        f"jsonl:{tmp_path}/items.jsonl",
        f"python:{HANDLERS}:record_sync",
    ]


def test_kind_is_case_insensitive() -> None:
    assert [o.name for o in parse_outputs("CONSOLE")] == ["console"]


def test_every_output_satisfies_the_protocol(tmp_path: Path) -> None:
    outputs: list[Output] = parse_outputs(
        f"console,jsonl:{tmp_path}/x.jsonl,python:{HANDLERS}:record_async"
    )
    for output in outputs:
        assert isinstance(output.name, str)
        assert callable(output.deliver)
        assert callable(output.aclose)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http:https://wms.example/hook", "set DIMMY_FORWARD_SECRET"),
        ("http:ftp://wms.example/hook", "is not an http:// or https:// URL"),
        ("http", "needs a URL"),
        ("sftp:wms.example/hook", "unknown output kind 'sftp'"),
        ("console,stdout", "unknown output kind 'stdout'"),
        ("/var/items.jsonl", "unknown output kind '/var/items.jsonl'"),
        ("console,console", "listed twice"),
        ("jsonl:/tmp/a.jsonl,jsonl:/tmp/x/../a.jsonl", "listed twice"),
        (f"python:{HANDLERS}:record_sync, python:{HANDLERS}:record_sync", "listed twice"),
        ("jsonl", "needs a file"),
        ("jsonl:", "needs a file"),
        ("python", "needs a target"),
        ("python:nomodule", "expected module:function"),
        ("console:loud", "takes no argument"),
    ],
)
def test_bad_spec_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_outputs(spec)


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_outputs("kafka:topic")
    for kind in OUTPUT_KINDS.values():
        assert kind.usage in str(caught.value)
    assert "python:module:function" in str(caught.value)


async def test_jsonl_groups_concurrent_deliveries_into_few_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    output = JsonlOutput(tmp_path / "group.jsonl")
    items = [make_item(f"{n:024x}") for n in range(200)]
    await asyncio.gather(*[output.deliver(item, f"key-{n}") for n, item in enumerate(items)])
    await output.aclose()
    records = JsonlOutput.read(tmp_path / "group.jsonl")
    assert sorted(r["idempotency_key"] for r in records) == sorted(f"key-{n}" for n in range(200))
    assert 1 <= len(fsyncs) < 20  # one fsync serves many waiting deliveries


# --- an output that blocks (catalogue S7) ----------------------------------------------------


class _RecordingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, noting every call it gets."""

    def __init__(self) -> None:
        super().__init__(2)
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


async def test_no_output_runs_in_the_default_executor(tmp_path: Path) -> None:
    """The default executor is shared (the SQLite store, DNS lookups): an output stuck in it
    would take them down with it."""
    executor = _RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    outputs = [
        ConsoleOutput(io.StringIO()),
        JsonlOutput(tmp_path / "items.jsonl"),
        PythonOutput(f"{HANDLERS}:record_sync"),
    ]
    for output in outputs:
        await output.deliver(make_item(), "k1")
        await output.aclose()
    assert executor.calls == []
    assert len(JsonlOutput.read(tmp_path / "items.jsonl")) == 1
    assert len(handlers.calls) == 1


async def test_a_blocked_python_output_starves_nothing_else() -> None:
    output = PythonOutput(f"{HANDLERS}:block_forever")
    blocked = [asyncio.create_task(output.deliver(make_item(f"i{n}"), f"k{n}")) for n in range(40)]
    try:
        await asyncio.sleep(0.2)
        # the threads everything else uses still answer
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 2) == "free"
        assert not any(task.done() for task in blocked)
        assert len(handlers.calls) <= 8  # its own threads, no more
    finally:
        handlers.release.set()  # before the loop closes: it would wait for its executor's threads
        for task in blocked:
            task.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)


async def test_a_delivery_that_does_not_answer_in_time_fails() -> None:
    output = PythonOutput(f"{HANDLERS}:block_forever", threads=2)
    started = time.monotonic()
    with pytest.raises(OutputError, match=r"no answer within 0\.2s"):
        await deliver_within(output, make_item(), "k1", 0.2)
    assert time.monotonic() - started < 1.5
    assert output.problems() == [f"{output.name}: 1 of 2 threads stuck in calls that timed out"]


async def test_an_async_output_that_never_returns_times_out() -> None:
    output = PythonOutput(f"{HANDLERS}:async_block_forever")
    started = time.monotonic()
    with pytest.raises(OutputError, match="no answer within"):
        await deliver_within(output, make_item(), "k1", 0.2)
    assert time.monotonic() - started < 1.5
    assert [name for name, _, _ in handlers.calls] == ["async_block_forever"]


async def test_every_thread_stuck_fails_at_once_until_one_returns() -> None:
    output = PythonOutput(f"{HANDLERS}:block_forever", threads=2)
    for n in range(2):
        with pytest.raises(OutputError, match="no answer within"):
            await deliver_within(output, make_item(), f"k{n}", 0.2)
    started = time.monotonic()
    with pytest.raises(OutputError, match="all 2 threads are stuck"):
        await deliver_within(output, make_item(), "k2", 5)
    assert time.monotonic() - started < 0.5  # no queueing behind the stuck ones
    assert len(handlers.calls) == 2  # the third never reached the function
    assert "deliveries fail until one returns" in output.problems()[0]

    handlers.release.set()  # the WMS answers again: the threads come back
    assert wait_until(lambda: not output.problems(), timeout=5)
    await deliver_within(output, make_item(), "k3", 5)
    assert [key for _, _, key in handlers.calls] == ["k0", "k1", "k3"]


async def test_a_delivery_given_up_before_it_started_never_runs() -> None:
    output = PythonOutput(f"{HANDLERS}:block_forever", threads=1)
    first = asyncio.create_task(output.deliver(make_item(), "k1"))
    assert await asyncio.to_thread(wait_until, lambda: len(handlers.calls) == 1, 5)
    with pytest.raises(OutputError, match="no answer within"):
        await deliver_within(output, make_item(), "queued", 0.2)  # waited for the busy thread
    first.cancel()
    handlers.release.set()
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.to_thread(wait_until, lambda: not output.problems(), 5)
    await deliver_within(output, make_item(), "k2", 5)
    assert [key for _, _, key in handlers.calls] == ["k1", "k2"]


def test_a_thread_blocked_for_ever_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = """
        import asyncio, json, threading
        from dimmy_webhooks.items import normalise, version_of
        from dimmy_webhooks.models import StoredItem
        from dimmy_webhooks.outputs import PythonOutput

        def block(item, key):
            threading.Event().wait(600)

        async def main():
            doc = {"_id": "a1", "updated_at": "2026-01-05T09:00:05Z"}
            raw = json.dumps(doc)
            fields = normalise(doc)
            item = StoredItem(item=fields, raw=raw, version=version_of(raw, fields), fetched_at=0.0)
            try:
                await asyncio.wait_for(PythonOutput("__main__:block").deliver(item, "k"), 0.2)
            except TimeoutError:
                print("timed out", flush=True)

        asyncio.run(main())
        print("main returned", flush=True)
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"still running 20 s after the delivery timed out: {out}")
    assert "timed out" in out
    assert "main returned" in out
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 15


# --- an output that raises what is not an Exception (catalogue S8) ---------------------------


@pytest.mark.parametrize("target", ["raise_base_exception", "async_raise_base_exception"])
async def test_anything_an_output_raises_is_a_failed_delivery(target: str) -> None:
    output = PythonOutput(f"{HANDLERS}:{target}")
    for kind in handlers.RAISED:
        with pytest.raises(OutputError, match=f"raised {kind.__name__}: raised by the output"):
            await deliver_within(output, make_item(), "k1", 5)
    assert handlers.raised == [kind.__name__ for kind in handlers.RAISED]
    # the output's threads survived all of it
    await deliver_within(PythonOutput(f"{HANDLERS}:record_sync"), make_item(), "k2", 5)
    assert output.problems() == []


async def test_the_callers_own_cancellation_still_propagates() -> None:
    """A stopping worker cancels its deliveries: that must not turn into a failed delivery."""
    for target in ("block_forever", "async_block_forever"):
        output = PythonOutput(f"{HANDLERS}:{target}")
        task = asyncio.create_task(deliver_within(output, make_item(), "k1", 60))
        assert await asyncio.to_thread(wait_until, lambda: len(handlers.calls) >= 1, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        handlers.calls.clear()
