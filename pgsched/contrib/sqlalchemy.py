"""SQLAlchemy 2: enqueue inside a Session's (or a Connection's) transaction.

    with Session(engine) as session:            # engine: create_engine("postgresql+psycopg://...")
        session.add(order)
        app.enqueue("ship", {"order": order.id}, conn=session)
        session.commit()                        # the run exists iff this commits

``conn=session`` is enough: the App hands it to :func:`driver_connection`, which returns the
psycopg connection under the session's transaction (starting it, as any statement would).
Nothing here imports SQLAlchemy: it reads the objects it is given.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgsched.errors import ConfigError, InvalidInput


def driver_connection(session_or_connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy 2 Session or Connection, in its transaction."""
    connection = getattr(session_or_connection, "connection", None)
    if connection is None:
        raise InvalidInput(
            "conn must be a psycopg connection, or a SQLAlchemy Session or Connection; "
            f"got {type(session_or_connection).__name__}"
        )
    if callable(connection):  # Session.connection(): the Connection bound to its transaction
        connection = connection()
    pooled = getattr(connection, "connection", None)  # Connection.connection: the DBAPI connection's proxy
    driver = getattr(pooled, "driver_connection", None)
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError(
            "enqueue on a SQLAlchemy session needs the psycopg (3) driver: create the engine with a "
            f"postgresql+psycopg:// URL (this one's connection is {type(driver).__name__})"
        )
    return driver
