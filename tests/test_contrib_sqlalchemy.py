"""SQLAlchemy 2 (psycopg driver): ``conn=session`` puts the run in the session's transaction, so
it exists if and only if the session commits — with a real engine, session and ORM model."""

from __future__ import annotations

from typing import Any, Iterator

import psycopg
import pytest
from sqlalchemy import String, create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgsched.errors import InvalidInput
from tests.support.db import scalar


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def engine(conn: psycopg.Connection) -> Iterator[Engine]:
    info = conn.info
    url = URL.create("postgresql+psycopg", username=info.user, host=info.host, port=info.port, database=info.dbname)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def counts(conn: psycopg.Connection) -> tuple[Any, Any]:
    return scalar(conn, "SELECT count(*) FROM orders"), scalar(conn, "SELECT count(*) FROM pgsched.runs_all")


def test_a_run_enqueued_on_a_session_exists_once_the_session_commits(app, engine, conn):
    @app.task
    def ship(order: int) -> None: ...

    with Session(engine) as session:
        session.add(order := Order(id=1, item="lamp"))
        session.flush()
        run_id = app.enqueue("ship", {"order": order.id}, conn=session)
        handle = ship.apply_async((order.id,), conn=session, task_id="ship-1")
        assert counts(conn) == (0, 0)  # not visible outside the transaction yet
        session.commit()
    assert counts(conn) == (1, 2)
    assert app.run(run_id).status == "queued" and handle.status == "queued"


def test_a_run_enqueued_on_a_session_that_rolls_back_never_exists(app, engine, conn):
    with Session(engine) as session:
        session.add(Order(id=2, item="desk"))
        session.flush()
        app.enqueue("ship", {"order": 2}, conn=session)
        session.rollback()
    assert counts(conn) == (0, 0)


def test_a_core_connection_joins_its_transaction_too(app, engine, conn):
    with pytest.raises(RuntimeError, match="changed my mind"), engine.begin() as connection:
        connection.execute(text("INSERT INTO orders (id, item) VALUES (3, 'chair')"))
        app.enqueue("ship", {"order": 3}, conn=connection)
        raise RuntimeError("changed my mind")
    assert counts(conn) == (0, 0)
    with engine.begin() as connection:
        app.enqueue("ship", {"order": 3}, conn=connection)
    assert counts(conn) == (0, 1)


def test_something_that_is_not_a_connection_is_refused(app, conn):
    with pytest.raises(InvalidInput, match="conn must be a psycopg connection, or a SQLAlchemy Session"):
        app.enqueue("ship", conn=object())  # type: ignore[arg-type]
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 0
