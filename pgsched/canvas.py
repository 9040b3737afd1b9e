"""Workflows as Python builds them: steps and their edges, before anything is in the database.

    wf = app.workflow("nightly-etl")
    a = wf.add(extract, file="1.csv")
    c = wf.add(load, after=[a], when="succeeded")
    wf.enqueue()

    chain(extract.s(file="x.csv"), transform.s(), load.s()).enqueue()
    chord([extract.s(file=f) for f in files], load.s()).enqueue()

``task.s(**args)`` is a :class:`Signature`: a step not yet placed. :func:`chain`, :func:`group`
and :func:`chord` nest as in Celery, and each places its steps into a :class:`Workflow` with the
same ``add`` a person calls, so they build the same rows. A chain (or chord) binds its parents'
results to the step's first parameter its own args leave unbound (Celery's partial arguments),
checked here against the task's signature; at run time the worker puts the results there
(:mod:`pgsched.workflow_results`).

Every step is checked when it is added, with an error that names it; nothing touches the
database until :meth:`Workflow.enqueue` writes the whole workflow in one transaction
(:mod:`pgsched.workflows`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pgsched import calling
from pgsched.enqueue import RunOptions, encode_args_text
from pgsched.errors import InvalidArgs, InvalidInput
from pgsched.tenants import check_tenant
from pgsched.workflow_results import ALL_RESULTS, ONE_RESULT, marker

if TYPE_CHECKING:
    import psycopg

    from pgsched.app import App, Connectable, Task
    from pgsched.workflows import WorkflowHandle

MAX_STEPS = 100_000
CONDITIONS = ("succeeded", "failed", "finished")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_OPTION_NAMES = frozenset({"queue", "priority", "max_attempts", "delay"})


@dataclass(frozen=True)
class Signature:
    """A task and its args, not yet a step (Celery's ``task.s(...)``). ``immutable``
    (``task.si(...)``): a chain or chord binds nothing to it."""

    task: Task[Any, Any]
    args: dict[str, Any]
    immutable: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def set(self, **options: Any) -> Signature:
        """The same signature with run options: ``queue``, ``priority``, ``max_attempts``, ``delay``."""
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise InvalidInput(
                f"{self.task.name}.s().set(): unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OPTION_NAMES))}"
            )
        return Signature(self.task, self.args, self.immutable, {**self.options, **options})

    def enqueue(
        self, *, conn: Connectable | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        """A workflow of this one step."""
        return _single_workflow(self, name, tenant).enqueue(conn=conn)


@dataclass(frozen=True)
class Chain:
    """Each part after the previous one; each step gets the previous part's result."""

    parts: tuple[Canvas, ...]

    def enqueue(
        self, *, conn: Connectable | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return _single_workflow(self, name, tenant).enqueue(conn=conn)

    async def enqueue_async(
        self, *, conn: psycopg.AsyncConnection | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return await _single_workflow(self, name, tenant).enqueue_async(conn=conn)


@dataclass(frozen=True)
class Group:
    """Its parts side by side, each after the same parents."""

    parts: tuple[Canvas, ...]

    def enqueue(
        self, *, conn: Connectable | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return _single_workflow(self, name, tenant).enqueue(conn=conn)

    async def enqueue_async(
        self, *, conn: psycopg.AsyncConnection | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return await _single_workflow(self, name, tenant).enqueue_async(conn=conn)


@dataclass(frozen=True)
class Chord:
    """A group (the header), then ``body`` once every header step has succeeded, with the list
    of their results in header order."""

    header: Group
    body: Canvas

    def enqueue(
        self, *, conn: Connectable | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return _single_workflow(self, name, tenant).enqueue(conn=conn)

    async def enqueue_async(
        self, *, conn: psycopg.AsyncConnection | None = None, name: str | None = None, tenant: str | None = None
    ) -> WorkflowHandle:
        return await _single_workflow(self, name, tenant).enqueue_async(conn=conn)


Canvas = Signature | Chain | Group | Chord


def chain(*parts: Canvas | Iterable[Canvas]) -> Chain:
    """``chain(a.s(), b.s(), c.s())``: a, then b with a's result, then c with b's."""
    return Chain(_canvases("chain", parts))


def group(*parts: Canvas | Iterable[Canvas]) -> Group:
    """``group(a.s(x=1), a.s(x=2))`` or ``group(a.s(x=f) for f in files)``: side by side."""
    return Group(_canvases("group", parts))


def chord(header: Group | Iterable[Canvas], body: Canvas) -> Chord:
    """``chord([a.s(x=f) for f in files], b.s())``: b once every a has succeeded, with their results."""
    head = header if isinstance(header, Group) else group(header)
    _check_canvas("chord body", body)
    return Chord(head, body)


def _canvases(kind: str, parts: tuple[Any, ...]) -> tuple[Canvas, ...]:
    """The parts of a chain or group, given one by one or as one iterable (each checked once:
    a generator of 10,000 signatures is the common case)."""
    flat: list[Any] = []
    for part in parts:
        if isinstance(part, (Signature, Chain, Group, Chord)):
            flat.append(part)
        elif isinstance(part, Iterable) and not isinstance(part, (str, bytes, dict)):
            start = len(flat)
            flat.extend(part)
            for index in range(start, len(flat)):
                if not isinstance(flat[index], (Signature, Chain, Group, Chord)):
                    _check_canvas(f"{kind} part {index}", flat[index])
        else:
            _check_canvas(f"{kind} part {len(flat)}", part)
    if not flat:
        raise InvalidInput(f"a {kind} needs at least one step")
    return tuple(flat)


def _check_canvas(where: str, part: Any) -> None:
    if not isinstance(part, (Signature, Chain, Group, Chord)):
        raise InvalidInput(
            f"{where} is {part!r}: expected a step such as task.s(...), or a chain, group or chord of them"
        )


def signature_of(task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any], *, immutable: bool) -> Signature:
    """``task.s(*args, **kwargs)``: positional args bound by name, as ``delay`` does. Keywords
    alone need no binding (``add`` checks them against the signature): 4 us less a step."""
    if not args:
        return Signature(task, kwargs, immutable)
    return Signature(task, calling.bind_by_name(task.name, task.signature, args, kwargs, partial=True), immutable)


# ---- the workflow a person builds, and what chain/group/chord place into it


@dataclass(eq=False, slots=True)
class Step:
    """One run of the workflow to be: ``after`` it in other steps, ``handle.run_ids[step.index]`` once enqueued."""

    workflow: Workflow
    index: int
    task: str
    args_json: str
    options: RunOptions
    after: tuple[Step, ...]
    when: str

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.task})"


@dataclass(frozen=True)
class Steps:
    """Several steps (what adding a group or chain returns): ``after=[steps]`` waits for each."""

    steps: tuple[Step, ...]


After = Step | Steps


class Workflow:
    """Steps and their edges, written by :meth:`enqueue` in one transaction."""

    def __init__(self, app: App, name: str, *, tenant: str | None = None) -> None:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput(f"a workflow's name is 1-200 characters, got {name!r}")
        self.app = app
        self.name = name
        self.tenant = check_tenant(tenant)
        self.steps: list[Step] = []
        # RunOptions by task and options: built (and validated) once, not once per step.
        self._options_seen: dict[tuple[str, tuple[tuple[str, Any], ...]], RunOptions] = {}

    def add(
        self,
        task: Task[Any, Any] | Canvas,
        *,
        after: Sequence[After] | After | None = None,
        when: str = "succeeded",
        **args: Any,
    ) -> Any:
        """Add a step: ``task`` with ``args``, run once every step in ``after`` has ended as
        ``when`` says ("succeeded", "failed": its attempts used up, "finished": either). A
        chain, group or chord adds its steps (its first ones after ``after``) and returns
        :class:`Steps`. A task parameter named ``after`` or ``when``: pass ``task.s(...)``."""
        from pgsched.app import Task

        parents = self._parents(after)
        if isinstance(task, Task):
            return self._add_step(Signature(task, dict(args)), parents, when, bind=None)
        if args:
            raise InvalidInput(
                f"args ({', '.join(sorted(args))}) go in task.s(...) when adding a chain, group or signature"
            )
        _check_canvas("wf.add()'s first argument", task)
        if isinstance(task, Signature):
            return self._add_step(task, parents, when, bind=None)
        return Steps(tuple(self._place(task, parents, when, bind=None)))

    def enqueue(self, *, conn: Connectable | None = None) -> WorkflowHandle:
        """Write the workflow (its row, its runs, their edges) in one transaction; with ``conn``,
        in the caller's. Steps without parents are queued at once."""
        from pgsched.workflows import insert_workflow

        self._check_not_empty()
        with self.app._connection(conn) as c:
            return insert_workflow(c, self)

    async def enqueue_async(self, *, conn: psycopg.AsyncConnection | None = None) -> WorkflowHandle:
        """The asyncio twin of :meth:`enqueue`."""
        from pgsched.workflows import insert_workflow_async

        self._check_not_empty()
        async with self.app._async_connection(conn) as c:
            return await insert_workflow_async(c, self)

    # ---- placing

    def _place(self, part: Canvas, parents: tuple[Step, ...], when: str, bind: str | None) -> list[Step]:
        """Add ``part`` after ``parents``; its last steps (what comes next waits for). A
        signature inside a group or chain is added directly (the common case: 1 us a step)."""
        if isinstance(part, Signature):
            return [self._add_step(part, parents, when, bind)]
        if isinstance(part, Group):
            placed: list[Step] = []
            for member in part.parts:
                if type(member) is Signature:
                    placed.append(self._add_step(member, parents, when, bind))
                else:
                    placed.extend(self._place(member, parents, when, bind))
            return placed
        if isinstance(part, Chord):
            header = self._place(part.header, parents, when, bind)
            return self._place(part.body, tuple(header), "succeeded", ALL_RESULTS)
        last = self._place(part.parts[0], parents, when, bind)
        previous = part.parts[0]
        for current in part.parts[1:]:
            shape = ONE_RESULT if type(previous) is Signature else _result_shape(previous)
            if type(current) is Signature and len(last) == 1:
                last = [self._add_step(current, (last[0],), "succeeded", shape)]
            else:
                last = self._place(current, tuple(last), "succeeded", shape)
            previous = current
        return last

    def _add_step(self, sig: Signature, parents: tuple[Step, ...], when: str, bind: str | None) -> Step:
        index = len(self.steps)
        if index >= MAX_STEPS:
            raise InvalidInput(f"{_label(index, sig)}: a workflow holds at most {MAX_STEPS:,} steps")
        if when not in CONDITIONS:
            raise InvalidInput(f"{_label(index, sig)}: when must be one of {', '.join(CONDITIONS)}, got {when!r}")
        args = sig.args
        if bind is not None and not sig.immutable:
            args = dict(args)
            args[_unbound_parameter(sig.task, args, _label(index, sig))] = marker(bind)
        try:  # the task's name was checked when it was registered
            sig.task.check_args(args)
            args_json = encode_args_text(args) if args else "{}"
            options = self._options(sig)
        except InvalidInput as exc:
            raise type(exc)(f"{_label(index, sig)}: {exc}") from None
        step = Step(self, index, sig.task.name, args_json, options, parents, when)
        self.steps.append(step)
        return step

    def _options(self, sig: Signature) -> RunOptions:
        # Most signatures set no options: their key needs no sorting (0.5 us a step).
        key = (sig.task.name, tuple(sorted(sig.options.items())) if sig.options else ())
        known = self._options_seen.get(key)
        if known is None:
            known = self._options_seen[key] = self._new_options(sig)
        return known

    def _new_options(self, sig: Signature) -> RunOptions:
        task = sig.task
        delay = sig.options.get("delay", 0.0)
        return RunOptions(
            queue=sig.options.get("queue", task.queue),
            priority=sig.options.get("priority", task.priority),
            max_attempts=sig.options.get("max_attempts", task.max_attempts),
            delay=delay,
            tenant=self.tenant,
        )

    def _parents(self, after: Sequence[After] | After | None) -> tuple[Step, ...]:
        """``after`` as steps of this workflow, each once, in the order given."""
        if after is None:
            return ()
        given = [after] if isinstance(after, (Step, Steps)) else after
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise InvalidInput(f"after must be a list of steps this workflow's add() returned, got {after!r}")
        parents: list[Step] = []
        for item in given:
            for step in item.steps if isinstance(item, Steps) else (item,):
                if not isinstance(step, Step):
                    raise InvalidInput(f"after names {step!r}: expected a step this workflow's add() returned")
                if step.workflow is not self:
                    raise InvalidInput(
                        f"after names {step.label} of workflow {step.workflow.name!r}, not of {self.name!r}: "
                        "a step waits only for steps of its own workflow"
                    )
                if step not in parents:
                    parents.append(step)
        return tuple(parents)

    def add_named(
        self,
        task: str,
        args: dict[str, Any],
        *,
        after: Sequence[Step] = (),
        when: str = "succeeded",
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | None = None,
    ) -> Step:
        """A step by task name, as the REST API adds them (its process may not know the
        task: args are checked against the signature only when it does, as ``POST /runs``)."""
        index = len(self.steps)
        if index >= MAX_STEPS:
            raise InvalidInput(f"a workflow holds at most {MAX_STEPS:,} steps")
        if when not in CONDITIONS:
            raise InvalidInput(f"when must be one of {', '.join(CONDITIONS)}, got {when!r}")
        options = self.app._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=None,
            delay=delay,
            tenant=self.tenant,
        )
        step = Step(self, index, task, self.app._encode(task, args), options, tuple(after), when)
        self.steps.append(step)
        return step

    def _check_not_empty(self) -> None:
        if not self.steps:
            raise InvalidInput(f"workflow {self.name!r} has no steps: add() some before enqueue()")


def _label(index: int, sig: Signature) -> str:
    """How an error names a step (formatted only for the error: 0.3 us a step otherwise)."""
    return f"step {index} ({sig.task.name})"


def _result_shape(previous: Canvas) -> str:
    """What the part after ``previous`` in a chain receives: a group's list of results, or
    one result (a step's, a chord's callback's, a chain's last)."""
    if isinstance(previous, Group):
        return ALL_RESULTS
    if isinstance(previous, Chain):
        return _result_shape(previous.parts[-1])
    return ONE_RESULT


def _unbound_parameter(task: Task[Any, Any], args: dict[str, Any], label: str) -> str:
    """The task's first named parameter its args leave unbound: where a chain or chord puts
    the parents' results (Celery passes them as the first positional argument)."""
    for name, parameter in task.signature.parameters.items():
        if parameter.kind in _NAMED and name not in args:
            return name
    raise InvalidArgs(
        f"{label}: {task.name}{task.signature} has no parameter left for its parents' results "
        f"(its args give {', '.join(sorted(args)) or 'none'}): leave one unbound, or use {task.name}.si(...) "
        "to ignore them"
    )


def _single_workflow(part: Canvas, name: str | None, tenant: str | None) -> Workflow:
    """A workflow holding only ``part``, named after its first task unless ``name`` says."""
    first = _first_signature(part)
    workflow = Workflow(first.task.app, name or _describe(part), tenant=tenant)
    workflow.add(part)
    return workflow


def _first_signature(part: Canvas) -> Signature:
    while not isinstance(part, Signature):
        part = part.header if isinstance(part, Chord) else part.parts[0]
    return part


def _describe(part: Canvas) -> str:
    """A name for people: ``chain(extract, transform, load)``, shortened to fit 200 characters."""
    if isinstance(part, Signature):
        text = part.task.name
    elif isinstance(part, Chord):
        text = f"chord({_describe(part.header)}, {_describe(part.body)})"
    else:
        kind = "chain" if isinstance(part, Chain) else "group"
        names = [_describe(p) for p in part.parts[:3]]
        more = f", … {len(part.parts) - 3} more" if len(part.parts) > 3 else ""
        text = f"{kind}({', '.join(names)}{more})"
    return text if len(text) <= 200 else text[:199] + "…"


def run_at_of(options: RunOptions, now: datetime) -> datetime:
    """When a step is due at the earliest (a waiting step is due when released, or later)."""
    from datetime import timedelta

    return (options.run_at or now) + timedelta(seconds=options.delay)
