"""The directory source: what one load reads, and how changes become snapshots (real files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import legation.controller.sources as sources_module
from legation.controller.sources import Source, SourceSnapshot, StatusSink
from legation.controller.sources.directory import DirectorySource
from legation.core.digest import content_version

TIMEOUT = 5.0  # generous: a change is normally seen in well under a second


def mapping(name: str, prefix: str = "/") -> str:
    return (
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
        f"metadata: {{name: {name}, namespace: ns}}\nspec: {{prefix: '{prefix}', service: 'a:80'}}\n"
    )


def names(snapshot: SourceSnapshot) -> list[str]:
    return [d.data["metadata"]["name"] for d in snapshot.documents]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- one load ------------------------------------------------------------------------------------


def test_loads_recursively_in_path_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", mapping("b1") + "---\n" + mapping("b2"))
    write(tmp_path / "a.yml", mapping("a"))
    write(tmp_path / "sub" / "deeper" / "c.yaml", mapping("c"))
    write(tmp_path / "sub" / "z.yaml", "---\n# only a comment\n---\n" + mapping("z"))
    snapshot = DirectorySource(tmp_path).load()
    assert names(snapshot) == ["a", "b1", "b2", "c", "z"]
    assert snapshot.errors == ()
    assert snapshot.origins == tuple(
        str(tmp_path / p) for p in ("a.yml", "b.yaml", "sub/deeper/c.yaml", "sub/z.yaml")
    )
    assert [(d.file, d.index) for d in snapshot.documents][1:3] == [
        (str(tmp_path / "b.yaml"), 0),
        (str(tmp_path / "b.yaml"), 1),
    ]


def test_skips_hidden_entries_and_other_files(tmp_path: Path) -> None:
    write(tmp_path / "ok.yaml", mapping("ok"))
    write(tmp_path / ".hidden.yaml", "not: [valid")
    write(tmp_path / ".git" / "x.yaml", mapping("git"))
    write(tmp_path / "..data" / "x.yaml", mapping("configmap-internal"))
    write(tmp_path / "README.md", "# hi")
    write(tmp_path / "ok.yaml~", mapping("backup"))
    write(tmp_path / "ok.yaml.swp", "junk")
    assert names(DirectorySource(tmp_path).load()) == ["ok"]


def test_a_syntax_error_is_an_error_for_that_file_only(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    write(tmp_path / "b.yaml", mapping("b1") + "---\nspec: {prefix: [\n")
    write(tmp_path / "c.yaml", mapping("c"))
    snapshot = DirectorySource(tmp_path).load()
    assert names(snapshot) == ["a", "c"]
    assert [str(e) for e in snapshot.errors] == [
        f"{tmp_path}/b.yaml:7: invalid YAML: while parsing a flow node expected the node content, "
        "but found '<stream end>'"
    ]
    assert len(snapshot.origins) == 3


def test_unreadable_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    snapshot = DirectorySource(tmp_path).load()
    assert names(snapshot) == ["a"]
    (error,) = snapshot.errors
    assert error.file == str(tmp_path / "latin1.yaml")
    assert error.reason.startswith("cannot read: 'utf-8' codec can't decode byte 0xe9")


def test_missing_root(tmp_path: Path) -> None:
    snapshot = DirectorySource(tmp_path / "nope").load()
    assert snapshot.documents == () and snapshot.origins == ()
    assert [str(e) for e in snapshot.errors] == [f"{tmp_path}/nope: no such file or directory"]


def test_single_file_root(tmp_path: Path) -> None:
    write(tmp_path / "one.txt", mapping("one"))
    write(tmp_path / "other.yaml", mapping("other"))
    assert names(DirectorySource(tmp_path / "one.txt").load()) == ["one"]


def test_relative_root_keeps_relative_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "manifests" / "a.yaml", mapping("a"))
    monkeypatch.chdir(tmp_path)
    (doc,) = DirectorySource("manifests").load().documents
    assert doc.file == "manifests/a.yaml"


def test_version_follows_content_only(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    write(tmp_path / "a.yaml", mapping("a"))
    first = source.load()
    assert source.load().version == first.version
    write(tmp_path / "a.yaml", mapping("a", "/x/"))
    changed = source.load()
    assert changed.version != first.version
    write(tmp_path / "a.yaml", mapping("a"))
    assert source.load().version == first.version
    os.rename(tmp_path / "a.yaml", tmp_path / "b.yaml")
    assert source.load().version != first.version  # the origin is part of the input
    assert content_version([("x", "1"), ("y", "2")]) == content_version([("y", "2"), ("x", "1")])


def test_unchanged_files_are_not_parsed_again(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    write(tmp_path / "b.yaml", mapping("b"))
    source = DirectorySource(tmp_path)
    first = source.load()
    write(tmp_path / "b.yaml", mapping("b", "/b/"))
    second = source.load()
    assert second.documents[0] is first.documents[0]
    assert second.documents[1] is not first.documents[1]


def test_directory_source_is_a_source() -> None:
    source: Source = DirectorySource(".")
    assert callable(source.snapshots)
    assert sorted(sources_module.__all__) == ["Source", "SourceSnapshot", "StatusSink"]
    assert not isinstance(source, StatusSink)  # a directory has nowhere to write status


# --- following changes -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def following(root: Path, **options: float) -> AsyncIterator[AsyncIterator[SourceSnapshot]]:
    stream = DirectorySource(root, **options).snapshots()  # type: ignore[arg-type]
    try:
        yield stream
    finally:
        await asyncio.wait_for(stream.aclose(), TIMEOUT)  # type: ignore[attr-defined]


async def next_snapshot(stream: AsyncIterator[SourceSnapshot]) -> SourceSnapshot:
    return await asyncio.wait_for(anext(stream), TIMEOUT)


async def assert_quiet(stream: AsyncIterator[SourceSnapshot], seconds: float = 0.6) -> None:
    task = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert not done, f"unexpected snapshot: {names(task.result())}"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await task


async def test_initial_snapshot_then_edits_additions_and_deletions(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    async with following(tmp_path) as stream:
        assert names(await next_snapshot(stream)) == ["a"]
        write(tmp_path / "a.yaml", mapping("a2"))
        assert names(await next_snapshot(stream)) == ["a2"]
        write(tmp_path / "sub" / "b.yaml", mapping("b"))
        assert names(await next_snapshot(stream)) == ["a2", "b"]
        (tmp_path / "a.yaml").unlink()
        assert names(await next_snapshot(stream)) == ["b"]


async def test_editor_rename_write_gives_one_complete_snapshot(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    async with following(tmp_path) as stream:
        await next_snapshot(stream)
        temp = tmp_path / ".a.yaml.swp"
        temp.write_text(mapping("renamed-in") + "---\n" + mapping("second"))
        os.replace(temp, tmp_path / "a.yaml")
        assert names(await next_snapshot(stream)) == ["renamed-in", "second"]
        await assert_quiet(stream)


async def test_a_slow_writer_is_read_once_it_is_done(tmp_path: Path) -> None:
    async with following(tmp_path, quiet_ms=300) as stream:
        await next_snapshot(stream)
        with (tmp_path / "slow.yaml").open("w") as f:
            for i in range(3):
                f.write(mapping(f"part{i}") + "---\n")
                f.flush()
                await asyncio.sleep(0.03)
        assert names(await next_snapshot(stream)) == ["part0", "part1", "part2"]
        await assert_quiet(stream)


async def test_changes_that_do_not_alter_content_give_no_snapshot(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    async with following(tmp_path) as stream:
        await next_snapshot(stream)
        write(tmp_path / "a.yaml", mapping("a"))  # same bytes
        write(tmp_path / ".hidden.yaml", mapping("h"))
        write(tmp_path / "notes.txt", "x")
        await assert_quiet(stream)


async def test_a_broken_file_is_reported_keeps_its_last_good_documents_and_recovers(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    write(tmp_path / "b.yaml", mapping("b"))
    b = str(tmp_path / "b.yaml")
    async with following(tmp_path) as stream:
        await next_snapshot(stream)
        write(tmp_path / "b.yaml", "kind: [\n")
        broken = await next_snapshot(stream)
        assert names(broken) == ["a", "b"] and [e.file for e in broken.errors] == [b]
        assert broken.kept == (b,)
        write(tmp_path / "b.yaml", mapping("b2"))
        fixed = await next_snapshot(stream)
        assert names(fixed) == ["a", "b2"] and fixed.errors == () and fixed.kept == ()


def prefixes(snapshot: SourceSnapshot) -> list[str]:
    return [d.data["spec"]["prefix"] for d in snapshot.documents]


def test_last_good_version_is_served_until_the_file_parses_again(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    write(tmp_path / "a.yaml", mapping("a", "/v1/") + "---\n" + mapping("a2", "/v1b/"))
    assert prefixes(source.load()) == ["/v1/", "/v1b/"]
    write(tmp_path / "a.yaml", mapping("a", "/v2/").replace("kind: Mapping", "  kind: Mapping"))
    broken = source.load()
    assert prefixes(broken) == ["/v1/", "/v1b/"] and broken.kept == (str(tmp_path / "a.yaml"),)
    (error,) = broken.errors
    assert error.file == str(tmp_path / "a.yaml") and "invalid YAML" in error.reason and error.line == 2
    write(tmp_path / "a.yaml", mapping("a", "/v3/").replace("spec:", "spec: {"))  # broken otherwise
    assert prefixes(source.load()) == ["/v1/", "/v1b/"]  # still the last *good* version
    write(tmp_path / "a.yaml", mapping("a", "/v4/"))
    assert prefixes(source.load()) == ["/v4/"]


def test_a_file_broken_from_the_start_contributes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", mapping("a"))
    write(tmp_path / "b.yaml", "kind: [\n")
    first = DirectorySource(tmp_path).load()
    assert (
        names(first) == ["a"]
        and first.kept == ()
        and [e.file for e in first.errors] == [str(tmp_path / "b.yaml")]
    )


def test_a_deleted_broken_file_takes_its_last_good_documents_with_it(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    write(tmp_path / "a.yaml", mapping("a"))
    write(tmp_path / "b.yaml", mapping("b"))
    source.load()
    write(tmp_path / "b.yaml", "kind: [\n")
    assert names(source.load()) == ["a", "b"]
    (tmp_path / "b.yaml").unlink()
    gone = source.load()
    assert (names(gone), gone.errors, gone.kept) == (["a"], (), ())
    write(tmp_path / "b.yaml", "kind: [\n")  # back, broken: the old version is not resurrected
    assert names(source.load()) == ["a"]


async def test_root_created_later_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "later"
    async with following(root, retry_seconds=0.1) as stream:
        assert [e.reason for e in (await next_snapshot(stream)).errors] == ["no such file or directory"]
        write(root / "a.yaml", mapping("a"))
        snapshot = await next_snapshot(stream)
        while names(snapshot) != ["a"]:  # the directory may be seen before the file in it
            snapshot = await next_snapshot(stream)
        write(root / "sub" / "b.yaml", mapping("b"))  # watched recursively from now on
        assert names(await next_snapshot(stream)) == ["a", "b"]


async def test_closing_stops_the_watch(tmp_path: Path) -> None:
    before = {t for t in asyncio.all_tasks() if not t.done()}
    async with following(tmp_path) as stream:
        await next_snapshot(stream)
        watchers = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
        assert [t.get_name() for t in watchers] == [f"watch {tmp_path}"]
    await asyncio.sleep(0)
    assert all(t.done() for t in watchers)
