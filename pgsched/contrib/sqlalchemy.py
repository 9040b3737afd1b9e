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
    attribute = getattr(session_or_connection, "connection", None)
    if attribute is None:
        raise InvalidInput(
            "conn must be a psycopg connection, or a SQLAlchemy Session or Connection; "
            f"got {type(session_or_connection).__name__}"
        )
    # Session.connection() is the Connection bound to its transaction; a Connection is one already.
    connection = attribute() if callable(attribute) else session_or_connection
    pooled = connection.connection  # Connection.connection: the pool's proxy of the DBAPI connection
    driver = getattr(pooled, "driver_connection", None)
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError(
            "enqueue on a SQLAlchemy session needs the psycopg (3) driver: create the engine with a "
            f"postgresql+psycopg:// URL (this one's connection is {type(driver).__name__})"
        )
    return driver
