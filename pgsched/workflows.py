"""Workflows in the database: writing one (its row, its runs, their edges, in one transaction)
and what the CLI, the API and the dashboard read and do with them (list, show, cancel).

What happens after the write is the schema's (0019): a step with parents is a run 'waiting',
released or cancelled by the statement that finishes its last parent. Each function here takes
an optional ``tenant``: given, it sees and changes only that tenant's workflows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from pgsched.app import _database_rejections
from pgsched.canvas import MAX_STEPS, Step, Workflow, run_at_of
from pgsched.enqueue import _copy_escape, _copy_value, origin_params
from pgsched.errors import InvalidInput, WorkflowNotFound
from pgsched.sql import queries

if TYPE_CHECKING:
    from pgsched.app import App

WORKFLOW_STATUSES = ("running", "succeeded", "failed", "cancelled")
MAX_LIST_LIMIT = 1000
MAX_STEPS_SHOWN = 10_000


@dataclass(frozen=True)
class WorkflowHandle:
    """An enqueued workflow: its id, and its runs' ids in the order the steps were added."""

    app: App
    id: int
    run_ids: list[int]

    def status(self) -> str:
        """running, succeeded, failed or cancelled (see :func:`get_workflow` for its steps)."""
        with self.app.pool.connection() as conn:
            row = conn.execute(queries["workflow_status"], {"id": self.id}).fetchone()
        if row is None:
            raise WorkflowNotFound(f"no workflow with id {self.id}")
        return str(row[0])


# ---- writing


def _copy_texts(workflow: Workflow, workflow_id: int, ids: list[int], now: datetime) -> tuple[bytes, bytes]:
    """The runs and the edges as COPY text, built as strings (as enqueue's bulk path does).
    The columns a step shares with the other steps of its task and options (task, queue,
    priority, run_at, attempts, tenant, origin, workflow) are formatted once per RunOptions,
    not once per step: run_at's isoformat alone was 2 us of the 4 us a step took."""
    came_from = "\t".join(_copy_value(value) for value in origin_params().values())
    tenant = _copy_value(workflow.tenant)
    # (task, options) -> the text between the id and the args, and the text after the args
    # up to the status (both the same for every step of that task and options).
    shared: dict[tuple[str, int], tuple[str, str]] = {}
    runs: list[str] = []
    edges: list[str] = []
    for step, run_id in zip(workflow.steps, ids):
        o = step.options
        key = (step.task, id(o))  # the steps hold their options: an id is not reused meanwhile
        parts = shared.get(key)
        if parts is None:
            run_at = run_at_of(o, now).isoformat()
            parts = shared[key] = (
                f"\t{_copy_escape(step.task)}\t",
                f"\t{o.queue}\t{o.priority}\t{run_at}\t{o.max_attempts}\t{tenant}\t{came_from}\t",
            )
        after = step.after
        args = step.args_json
        if "\\" in args:
            args = args.replace("\\", "\\\\")
        if after:
            runs.append(f"{run_id}{parts[0]}{args}{parts[1]}waiting\t{workflow_id}\t{len(after)}\n")
            when = step.when
            if len(after) == 1:  # a chain's or a group's step: no generator (1 us a step)
                edges.append(f"{run_id}\t{ids[after[0].index]}\t{when}\t0\n")
            else:
                edges.extend(f"{run_id}\t{ids[p.index]}\t{when}\t{position}\n" for position, p in enumerate(after))
        else:
            runs.append(f"{run_id}{parts[0]}{args}{parts[1]}queued\t{workflow_id}\t\\N\n")
    return "".join(runs).encode(), "".join(edges).encode()


def insert_workflow(conn: psycopg.Connection, workflow: Workflow) -> WorkflowHandle:
    """Write ``workflow`` in one transaction (a savepoint in the caller's, if one is open)."""
    with _database_rejections():
        # Reserve first, as enqueue_many does: on the caller's idle non-autocommit connection
        # this opens the caller's transaction, so the block below is a savepoint in it.
        ids, now = conn.execute(
            queries["run_reserve_ids"], {"n": len(workflow.steps), "run_at": None, "delay": 0.0}
        ).fetchone()  # type: ignore[misc]
        with conn.transaction():
            row = conn.execute(queries["workflow_insert"], _workflow_params(workflow)).fetchone()
            assert row is not None
            runs, edges = _copy_texts(workflow, row[0], ids, now)
            with conn.cursor().copy(queries["workflow_run_copy"]) as copy:
                copy.write(runs)
            if edges:
                with conn.cursor().copy(queries["workflow_edge_copy"]) as copy:
                    copy.write(edges)
    return WorkflowHandle(workflow.app, row[0], list(ids))


def _workflow_params(workflow: Workflow) -> dict[str, Any]:
    return {"name": workflow.name, "tenant": workflow.tenant, "steps": len(workflow.steps)}


async def insert_workflow_async(conn: psycopg.AsyncConnection, workflow: Workflow) -> WorkflowHandle:
    """The asyncio twin of :func:`insert_workflow`."""
    with _database_rejections():
        cursor = await conn.execute(
            queries["run_reserve_ids"], {"n": len(workflow.steps), "run_at": None, "delay": 0.0}
        )
        ids, now = await cursor.fetchone()  # type: ignore[misc]
        async with conn.transaction():
            cursor = await conn.execute(queries["workflow_insert"], _workflow_params(workflow))
            row = await cursor.fetchone()
            assert row is not None
            runs, edges = _copy_texts(workflow, row[0], ids, now)
            async with conn.cursor().copy(queries["workflow_run_copy"]) as copy:
                await copy.write(runs)
            if edges:
                async with conn.cursor().copy(queries["workflow_edge_copy"]) as copy:
                    await copy.write(edges)
    return WorkflowHandle(workflow.app, row[0], list(ids))


# ---- a workflow described as data (REST POST /workflows)


@dataclass(frozen=True)
class StepDescription:
    """One step as a request names it: ``key`` (unique in the request) is what ``after`` names."""

    key: str
    task: str
    args: dict[str, Any]
    after: list[str]
    when: str = "succeeded"
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    delay: float | None = None


def workflow_from_description(
    app: App, name: str, steps: list[StepDescription], *, tenant: str | None = None
) -> tuple[Workflow, list[str]]:
    """The workflow ``steps`` describe, checked whole before anything is written: each error
    names its step (by key) and the problem. Steps may be listed in any order; they are added
    parents first (a run's parents are earlier runs), so the second list gives each run's key
    in the order of ``handle.run_ids``."""
    workflow = Workflow(app, name, tenant=tenant)
    if not steps:
        raise InvalidInput("steps: a workflow needs at least one step")
    if len(steps) > MAX_STEPS:
        raise InvalidInput(f"steps: a workflow holds at most {MAX_STEPS:,} steps, got {len(steps):,}")
    by_key: dict[str, StepDescription] = {}
    for step in steps:
        if step.key in by_key:
            raise InvalidInput(f"step {step.key!r}: two steps have this key; each needs its own")
        by_key[step.key] = step
    for step in steps:
        for parent in step.after:
            if parent not in by_key:
                raise InvalidInput(f"step {step.key!r}: after names {parent!r}, which is no step of this workflow")
            if parent == step.key:
                raise InvalidInput(f"step {step.key!r}: after names the step itself")
        if len(set(step.after)) != len(step.after):
            raise InvalidInput(f"step {step.key!r}: after names a step twice")
    placed: dict[str, Step] = {}
    for step in _parents_first(steps, by_key):
        try:
            placed[step.key] = workflow.add_named(
                step.task,
                step.args,
                after=[placed[parent] for parent in step.after],
                when=step.when,
                queue=step.queue,
                priority=step.priority,
                max_attempts=step.max_attempts,
                delay=step.delay,
            )
        except InvalidInput as exc:
            raise type(exc)(f"step {step.key!r} ({step.task}): {exc}") from None
    return workflow, list(placed)


def _parents_first(steps: list[StepDescription], by_key: dict[str, StepDescription]) -> list[StepDescription]:
    """The steps in an order where each comes after its parents, the given order kept where it
    can be (Kahn's algorithm over the given order); a cycle is refused, naming its steps."""
    waiting_on = {step.key: len(step.after) for step in steps}
    children: dict[str, list[str]] = {}
    for step in steps:
        for parent in step.after:
            children.setdefault(parent, []).append(step.key)
    ready = deque(step.key for step in steps if not step.after)
    ordered: list[StepDescription] = []
    while ready:
        key = ready.popleft()
        ordered.append(by_key[key])
        for child in children.get(key, ()):
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                ready.append(child)
    if len(ordered) < len(steps):
        cycle = _a_cycle(by_key, {key for key, left in waiting_on.items() if left})
        raise InvalidInput(
            f"step {cycle[0]!r}: its after= makes a cycle ({' -> '.join(repr(k) for k in cycle)}); "
            "a step cannot wait for itself, directly or through others"
        )
    return ordered


def _a_cycle(by_key: dict[str, StepDescription], stuck: set[str]) -> list[str]:
    """One cycle among the steps left waiting: follow parents still stuck until one repeats."""
    key = min(stuck)
    seen: list[str] = []
    while key not in seen:
        seen.append(key)
        key = next(parent for parent in by_key[key].after if parent in stuck)
    return [*seen[seen.index(key) :], key]


# ---- reading and steering (CLI, API, dashboard)


def check_workflow_id(workflow_id: Any) -> int:
    if isinstance(workflow_id, bool) or not isinstance(workflow_id, int) or not 0 < workflow_id < 2**63:
        raise InvalidInput(f"a workflow id is a positive integer, got {workflow_id!r}")
    return workflow_id


def list_workflows(
    conn: psycopg.Connection,
    *,
    status: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Workflows newest first; pass the last id seen as ``before_id`` for the next page."""
    if status is not None and status not in WORKFLOW_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(WORKFLOW_STATUSES)}, got {status!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit!r}")
    if before_id is not None:
        check_workflow_id(before_id)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            queries["workflow_list"], {"status": status, "limit": limit, "before_id": before_id, "tenant": tenant}
        ).fetchall()


def get_workflow(conn: psycopg.Connection, workflow_id: int, *, tenant: str | None = None) -> dict[str, Any]:
    """One workflow with its steps (at most MAX_STEPS_SHOWN, in id order: parents first)."""
    params = {"id": check_workflow_id(workflow_id), "tenant": tenant}
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["workflow_get"], params).fetchone()
        if row is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id}")
        row["steps_shown"] = cur.execute(
            queries["workflow_steps"], {"id": workflow_id, "limit": MAX_STEPS_SHOWN}
        ).fetchall()
    return row


def cancel_workflow(conn: psycopg.Connection, workflow_id: int, *, tenant: str | None = None) -> int:
    """Cancel every step not yet ended (running ones as ``runs cancel`` does); how many."""
    row = conn.execute(queries["workflow_cancel"], {"id": check_workflow_id(workflow_id), "tenant": tenant}).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id}")
    return int(row[0])


def workflow_of_run(conn: psycopg.Connection, run_id: int, *, tenant: str | None = None) -> int | None:
    """The workflow run ``run_id`` is a step of, if any."""
    row = conn.execute(queries["run_workflow_of"], {"id": run_id, "tenant": tenant}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


@dataclass(frozen=True)
class TreeLine:
    """One line of a workflow drawn as a tree: a step, how deep, and its other parents."""

    depth: int
    step: dict[str, Any]
    also_after: list[int]


def step_tree(steps: list[dict[str, Any]]) -> list[TreeLine]:
    """The steps as an indented tree: each under its first parent, its other parents named
    (a DAG has no single tree; this one shows every step once, parents before children)."""
    by_id = {step["id"]: step for step in steps}
    children: dict[int | None, list[dict[str, Any]]] = {}
    for step in steps:
        known = [p for p in step["parents"] if p in by_id]
        children.setdefault(known[0] if known else None, []).append(step)
    lines: list[TreeLine] = []
    stack = [(0, step) for step in reversed(children.get(None, []))]
    while stack:
        depth, step = stack.pop()
        lines.append(TreeLine(depth, step, [p for p in step["parents"][1:] if p in by_id]))
        stack.extend((depth + 1, child) for child in reversed(children.get(step["id"], [])))
    return lines


# ---- the dashboard's graph

GRAPH_MAX_STEPS = 400  # beyond this the page lists the steps as a tree (an SVG of 10,000 boxes helps no one)
_COLUMN_PX, _ROW_PX, _BOX_W, _BOX_H, _MARGIN = 190, 46, 160, 30, 12


@dataclass(frozen=True)
class GraphNode:
    id: int
    task: str
    status: str
    x: int
    y: int


@dataclass(frozen=True)
class GraphEdge:
    x1: int
    y1: int
    x2: int
    y2: int
    condition: str


@dataclass(frozen=True)
class Graph:
    """A workflow drawn left to right: each step in the column after its deepest parent."""

    nodes: list[GraphNode]
    edges: list[GraphEdge]
    width: int
    height: int


def step_graph(steps: list[dict[str, Any]]) -> Graph | None:
    """Boxes and arrows for the dashboard's SVG (steps in id order: parents first); None past
    GRAPH_MAX_STEPS."""
    if len(steps) > GRAPH_MAX_STEPS:
        return None
    column: dict[int, int] = {}
    rows_used: dict[int, int] = {}
    place: dict[int, tuple[int, int]] = {}
    nodes = []
    for step in steps:
        depth = 1 + max((column[p] for p in step["parents"] if p in column), default=-1)
        column[step["id"]] = depth
        row = rows_used.get(depth, 0)
        rows_used[depth] = row + 1
        x, y = _MARGIN + depth * _COLUMN_PX, _MARGIN + row * _ROW_PX
        place[step["id"]] = (x, y)
        nodes.append(GraphNode(step["id"], step["task"], step["status"], x, y))
    edges = [
        GraphEdge(
            place[p][0] + _BOX_W, place[p][1] + _BOX_H // 2, place[s["id"]][0], place[s["id"]][1] + _BOX_H // 2, c
        )
        for s in steps
        for p, c in zip(s["parents"], s["conditions"])
        if p in place
    ]
    width = _MARGIN * 2 + (max(column.values(), default=0) + 1) * _COLUMN_PX
    height = _MARGIN * 2 + max(rows_used.values(), default=1) * _ROW_PX
    return Graph(nodes, edges, width, height)
