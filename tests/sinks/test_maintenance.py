"""Compaction and erasure keep every other row exactly once, and switch atomically."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import orjson
import pytest

from tripwire.sinks.compact import compact, recover
from tripwire.sinks.forget import forget
from tripwire.sinks.lake import Lake, data_files
from tripwire.sinks.writer import LakeWriter
from tests.sinks.helpers import BASE_MS, DAY_MS, event, lake_table, send
from tests.sinks.lakes import LakeSetup, make_lake
from tripwire.cli.main import main
from tripwire.log.memory import MemoryLog


_LOGS: dict[str, MemoryLog] = {}


async def fill(lake: LakeSetup, events: list[dict[str, object]], **cfg: object) -> None:
    """Send ``events`` (to the lake's own log) and run the sink's writer with tiny files, as a quiet site would."""
    log = _LOGS.get(lake.url)
    if log is None:
        log = _LOGS[lake.url] = MemoryLog(2)
        await log.start()
    await send(log, events)
    writer = LakeWriter(lake.lake, lake.config(**{"max_file_rows": 9, **cfg}))  # type: ignore[arg-type]
    for p in range(2):
        offset = writer.assign(p)
        while records := await log.read("events", p, offset, 25):
            offset = records[-1].offset + 1
            writer.process(records)
            writer.seal_aged(now=1e12)
            writer.flush()
    writer.close()


def days_ago(i: int, n: int) -> int:
    return BASE_MS - n * DAY_MS + i


def ids(lake: LakeSetup) -> list[str]:
    return sorted(lake.duckdb("SELECT message_id FROM lake").message_id)


async def test_compaction_merges_closed_days_and_keeps_every_row_once(lake: LakeSetup) -> None:
    old = [event(i, at_ms=days_ago(i, 3)) for i in range(120)] + [event(500 + i, at_ms=days_ago(i, 2)) for i in range(60)]
    today = [event(1000 + i) for i in range(40)]
    await fill(lake, old + today)
    before = data_files(lake.lake)
    expected = sorted(str(e["messageId"]) for e in old + today)
    assert ids(lake) == expected

    done = compact(lake.lake, lake.cfg)
    assert {j.directory for j in done} == {d for d in before if not d.endswith(str(today[0]["timestamp"])[:10])}
    after = data_files(lake.lake)
    for job in done:
        assert len(after[job.directory]) == 1 < len(before[job.directory])
        assert job.rows == sum(1 for e in old if f"date={str(e['timestamp'])[:10]}" == job.directory)
    today_dir = f"date={str(today[0]['timestamp'])[:10]}"
    assert after[today_dir] == before[today_dir]  # not closed yet: untouched
    assert ids(lake) == expected
    assert sorted(lake.pandas().message_id) == expected

    # Late events for a compacted day arrive afterwards; another run merges them too.
    late = [event(2000 + i, at_ms=days_ago(i, 3)) for i in range(20)]
    await fill(lake, late)
    assert ids(lake) == sorted(expected + [str(e["messageId"]) for e in late])
    compact(lake.lake, lake.cfg, date=str(late[0]["timestamp"])[:10])
    assert len(data_files(lake.lake)[f"date={str(late[0]['timestamp'])[:10]}"]) == 1
    assert ids(lake) == sorted(expected + [str(e["messageId"]) for e in late])
    assert compact(lake.lake, lake.cfg, date=str(late[0]["timestamp"])[:10]) == []  # nothing small left


class Dying(Exception):
    pass


async def test_a_compaction_that_dies_half_way_is_finished_by_the_next_run(lake: LakeSetup) -> None:
    events = [event(i, at_ms=days_ago(i, 4)) for i in range(80)]
    await fill(lake, events)
    real_delete = type(lake.lake).delete
    real_exchange = getattr(type(lake.lake), "_exchange", None)

    def die(*args: object, **kwargs: object) -> None:
        raise Dying()

    # Die at the last step: after the new files exist (S3) / before the exchange (local).
    if lake.kind == "s3":
        type(lake.lake).delete = die  # type: ignore[method-assign]
    else:
        type(lake.lake)._exchange = die  # type: ignore[attr-defined]
    try:
        with pytest.raises(Dying):
            compact(lake.lake, lake.cfg)
    finally:
        type(lake.lake).delete = real_delete  # type: ignore[method-assign]
        if real_exchange is not None:
            type(lake.lake)._exchange = real_exchange  # type: ignore[attr-defined]
    expected = sorted(str(e["messageId"]) for e in events)
    if lake.kind == "local":
        assert ids(lake) == expected  # the exchange never happened: readers saw no change at all
    assert recover(lake.lake) == 1
    assert ids(lake) == expected
    compact(lake.lake, lake.cfg)
    assert ids(lake) == expected and len(data_files(lake.lake)) == 1


async def test_readers_during_a_local_compaction_never_see_a_row_twice_or_miss_one(tmp_path: Path) -> None:
    lake = make_lake("local", tmp_path, None)
    events = [event(i, at_ms=days_ago(i, d)) for d in (3, 4, 5) for i in range(d * 1000, d * 1000 + 150)]
    await fill(lake, events)
    stop = threading.Event()
    counts: list[int] = []

    def read() -> None:
        con = duckdb.connect()
        while not stop.is_set():
            try:
                counts.append(con.execute(
                    f"SELECT count(DISTINCT message_id) * 1000000 + count(*) FROM read_parquet('{lake.url}/**/*.parquet', hive_partitioning=true)"
                ).fetchone()[0])
            except duckdb.IOException:
                pass  # a file listed just before the switch is gone: the reader retries
        con.close()

    t = threading.Thread(target=read)
    t.start()
    try:
        done = compact(lake.lake, lake.cfg)
    finally:
        stop.set()
        t.join(timeout=30)
    assert len(done) == 3 and counts
    assert set(counts) == {450 * 1000000 + 450}


async def test_forget_removes_one_person_and_keeps_every_other_row_once(lake: LakeSetup) -> None:
    events = [event(i, user="victim" if i % 5 == 0 else f"u{i % 3}") for i in range(100)]
    events += [event(200 + i, user="victim", at_ms=days_ago(i, 2)) for i in range(9)]  # one whole file
    events += [event(300, user="other", props={"note": "victim"})]  # mentions, is not, the person
    await fill(lake, events)
    report = forget(lake.lake, lake.cfg, "victim")
    assert report.rows_removed == 20 + 9
    assert sum(report.rewritten.values()) + sum(report.deleted.values()) == 29
    assert report.deleted  # the file of only their rows is gone
    keep = sorted(str(e["messageId"]) for e in events if e["anonymousId"] != "victim")
    assert ids(lake) == keep
    assert lake.duckdb("SELECT count(*) AS n FROM lake WHERE anonymous_id = 'victim'").n[0] == 0
    again = forget(lake.lake, lake.cfg, "victim")
    assert again.rows_removed == 0 and ids(lake) == keep


async def test_forget_matches_user_id_too(tmp_path: Path) -> None:
    lake = make_lake("local", tmp_path, None)
    e1 = event(1)
    e1["userId"] = "customer-42"
    await fill(lake, [e1, event(2), event(3)])
    assert forget(lake.lake, lake.cfg, "customer-42").rows_removed == 1
    assert ids(lake) == ["m-2", "m-3"]


async def test_a_journaled_cut_whose_file_was_compacted_is_not_written_again(tmp_path: Path) -> None:
    lake = make_lake("local", tmp_path, None)
    events = [event(i, at_ms=days_ago(i, 3)) for i in range(30)]
    log = MemoryLog(1)
    await log.start()
    await send(log, events)
    writer = LakeWriter(lake.lake, lake.config(max_file_rows=10))
    writer.assign(0)
    writer.process(await log.read("events", 0, 0, 1000))
    writer.flush()  # files written; their cuts are still "pending" in the saved state (a crash now)
    compact(lake.lake, lake.cfg)
    again = LakeWriter(lake.lake, lake.cfg)
    again.parts.clear()
    again.process(await log.read("events", 0, again.assign(0), 1000))
    again.close()
    assert ids(lake) == sorted(str(e["messageId"]) for e in events)


async def test_migrate_fills_typed_columns_in_files_written_before_them(lake: LakeSetup) -> None:
    from tripwire.sinks.migrate import migrate

    first = [event(i) for i in range(30)]
    await fill(lake, first, infer_columns=False)  # price and qty stay in the JSON, as before typed columns
    later = [event(100 + i) for i in range(10)]
    await fill(lake, later, infer_columns=False, promote={"price": "number"})  # a sink started with a catalog
    df = lake.duckdb("SELECT message_id, properties_price FROM lake")
    assert df.properties_price.isna().sum() == 30  # the new column, null in the files written before

    wanted = {"price": "number", "qty": "integer"}
    report = migrate(lake.lake, lake.config(promote=wanted, infer_columns=False))
    assert report.columns == ["properties_qty"] and report.values == 30 + 40
    last = [event(200 + i) for i in range(10)]
    await fill(lake, last, promote=wanted)  # restarted sinks write the new columns
    df = lake.duckdb("SELECT message_id, properties_price, properties_qty, properties FROM lake")
    assert len(df) == 50
    for row in df.itertuples():
        i = int(row.message_id[2:])
        assert row.properties_price == i / 4 and row.properties_qty == i % 5
        assert orjson.loads(row.properties) in ({"sku": f"sku-{i}"}, {})  # sku got a column in the last files
    # sku got an inferred column in the last files: migrating again types it in the older ones too.
    assert migrate(lake.lake, lake.config(promote=wanted)).values == 40
    assert set(lake.duckdb("SELECT properties FROM lake").properties) == {"{}"}
    again = migrate(lake.lake, lake.config(promote=wanted))
    assert again.columns == [] and again.values == 0 and again.files == 0


def _config(tmp_path: Path, lake: Lake) -> Path:
    path = tmp_path / "tripwire.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[sink]\nlake_url = "{lake.url}"\n[sink.promote]\nqty = "integer"\n')
    return path


async def test_cli_compact_and_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = make_lake("local", tmp_path, None)
    events = [event(i, at_ms=days_ago(i, 3), user="ann" if i < 4 else "bob") for i in range(40)]
    await fill(lake, events, infer_columns=False)
    cfg = _config(tmp_path, lake.lake)
    day = str(events[0]["timestamp"])[:10]
    assert main(["--config", str(cfg), "lake", "forget", "--user", "ann", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 4 row(s)" in out
    assert "rewrote" not in out and "deleted" not in out  # a dry run does neither
    assert len(ids(lake)) == 40
    assert main(["--config", str(cfg), "lake", "forget", "--user", "ann"]) == 0
    assert "removed 4 row(s)" in capsys.readouterr().out
    assert main(["--config", str(cfg), "lake", "compact", "--date", day]) == 0
    assert f"date={day}:" in capsys.readouterr().out
    assert main(["--config", str(cfg), "lake", "compact"]) == 0  # that day is done; today is not closed
    assert "nothing to compact in days that ended over 7200s ago (sink.compact_min_age_s" in capsys.readouterr().out
    assert ids(lake) == sorted(str(e["messageId"]) for e in events[4:])
    assert main(["--config", str(cfg), "lake", "migrate"]) == 0
    assert "new columns: properties_qty; 36 value(s) moved out of the JSON columns" in capsys.readouterr().out
    assert lake.duckdb("SELECT sum(properties_qty) AS s FROM lake").s[0] == sum(i % 5 for i in range(4, 40))
    assert main(["--config", str(cfg), "lake", "compact", "--date", "yesterday"]) == 2
    assert "not YYYY-MM-DD" in capsys.readouterr().err
    assert lake_table(lake.lake).message_id.is_unique


@pytest.mark.parametrize("command", [["forget", "--user", "ann"], ["forget", "--user", "ann", "--dry-run"],
                                     ["compact"], ["compact", "--date", "2026-11-02"], ["migrate"]])
def test_cli_refuses_a_lake_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              command: list[str]) -> None:
    # A typo in --lake or a forgotten --config must not report "0 files scanned, removed 0 row(s)"
    # as if an erasure had been done, nor create a lake there.
    typo = tmp_path / "lake-typo"
    path = tmp_path / "tripwire.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[sink]\nlake_url = "{typo}"\n[sink.promote]\nqty = "integer"\n')
    assert main(["--config", str(path), "lake", *command]) == 1
    captured = capsys.readouterr()
    assert f"no Tripwire lake at {typo}" in captured.err
    assert "removed" not in captured.out
    assert not typo.exists()
    assert main(["--config", str(path), "lake", *command, "--lake", str(tmp_path / "other")]) == 1
    assert f"no Tripwire lake at {tmp_path / 'other'}" in capsys.readouterr().err


def test_cli_compact_refuses_a_date_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lake", "compact", "--date", "2026-13-45", "--lake", str(tmp_path)]) == 2
    assert "--date '2026-13-45' is not YYYY-MM-DD (a calendar date)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and the reason, status 2
        main(["lake", "compact", "--target-mb", "0", "--lake", str(tmp_path)])
    assert exit_info.value.code == 2 and "0 is not a size in MB" in capsys.readouterr().err


async def test_forget_also_erases_the_anonymous_history_linked_to_the_user(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Page views before login carry only the anonymousId; identify links it to the userId. Erasing
    # the userId alone left the person's pre-login history (pages, user agent, IP prefix) in the lake.
    lake = make_lake("local", tmp_path, None)
    before = [event(i, user="a1") for i in range(3)]
    login = event(3, user="a1")
    login["userId"] = "u1"
    alias = event(4, user="a9")
    alias.update(type="alias", userId="u1", previousId="old-id")
    other_on_same_device = event(5, user="a1")
    other_on_same_device["userId"] = "u2"
    unrelated = event(6, user="a2")
    await fill(lake, [*before, login, alias, other_on_same_device, unrelated])
    report = forget(lake.lake, lake.cfg, "u1", dry_run=True)
    assert report.linked == ["a1", "a9", "old-id"] and report.rows_removed == 5
    assert forget(lake.lake, lake.cfg, "u1", exact=True, dry_run=True).rows_removed == 2
    cfg = _config(tmp_path, lake.lake)
    assert main(["--config", str(cfg), "lake", "forget", "--user", "u1"]) == 0
    assert "with the anonymous ids seen with it: a1, a9, old-id" in capsys.readouterr().out
    assert ids(lake) == ["m-5", "m-6"]  # another user on the same browser, and a stranger, stay


def test_cli_on_an_unreachable_s3_lake_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    assert main(["lake", "forget", "--user", "ann", "--lake", "s3://lake/events"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tripwire lake forget: cannot stat s3://lake/events/_tripwire_sink/schema.json")
    assert "Traceback" not in err
