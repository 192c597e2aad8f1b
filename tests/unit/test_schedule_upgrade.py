"""A SQLite schedule file made before the tombstone ids were AUTOINCREMENT: a worker
refuses it with one line, and ``create_tables`` upgrades it in place (no broker)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from postdate import ConfigError
from postdate.schedule import ScheduleStore

OLD_CANCEL_TABLE = """CREATE TABLE postdate_cancel (
    id INTEGER NOT NULL, message_id VARCHAR(255) NOT NULL, requested_at DATETIME NOT NULL,
    reason TEXT NOT NULL, too_late_by VARCHAR(255), PRIMARY KEY (id), UNIQUE (message_id))"""
OLD_WATCHER_TABLE = """CREATE TABLE postdate_watcher (
    name VARCHAR(255) NOT NULL PRIMARY KEY, seen_cancel_id BIGINT NOT NULL,
    beat_at DATETIME NOT NULL)"""


def old_schedule_file(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute(OLD_CANCEL_TABLE)
        db.execute(OLD_WATCHER_TABLE)
        db.execute("INSERT INTO postdate_cancel VALUES (1, 'a', '2026-01-01', '', NULL)")
        db.execute("INSERT INTO postdate_cancel VALUES (2, 'b', '2026-01-01', '', NULL)")
        db.execute("INSERT INTO postdate_watcher VALUES ('w', 5, '2026-01-01')")
    return f"sqlite+aiosqlite:///{path}"


async def test_a_worker_refuses_the_old_table_and_create_tables_upgrades_it(
    tmp_path: Path,
) -> None:
    store = ScheduleStore.from_url(old_schedule_file(tmp_path / "old.db"))
    try:
        with pytest.raises(ConfigError, match="postdate schedule init"):
            await store.watch("w").start()
        await store.create_tables()
        async with store.sessions() as session, session.begin():
            await session.execute(text("DELETE FROM postdate_cancel WHERE id = 2"))
            await session.execute(
                text(
                    "INSERT INTO postdate_cancel (message_id, requested_at, reason) "
                    "VALUES ('c', '2026-01-02', '')"
                )
            )
        async with store.sessions() as session:
            rows = (await session.execute(text("SELECT id, message_id FROM postdate_cancel"))).all()
        # kept; and the new id is above any id once handed out or seen by a worker
        assert [tuple(row) for row in rows] == [(1, "a"), (6, "c")]
        watch = store.watch("w")
        await watch.start()
        await watch.stop()
    finally:
        await store.close()
