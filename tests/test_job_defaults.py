"""The API's job defaults are the library's: JobCreate reads them from JobSpec and Schedule, and
this keeps anyone from typing a copy back in that says something else."""

from __future__ import annotations

import dataclasses

import msgspec

from pgsched.api.schemas import JobCreate
from pgsched.jobs import JobSpec
from pgsched.schedule import Schedule


def _dataclass_defaults(cls: type) -> dict[str, object]:
    found: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def test_job_create_defaults_are_job_spec_and_schedule_defaults() -> None:
    library = {**_dataclass_defaults(JobSpec), **_dataclass_defaults(Schedule)}
    library["every"] = library.pop("every_s")  # the wire name of the library's every_s
    api = {
        f.name: f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
        for f in msgspec.structs.fields(JobCreate)
        if f.required is False
    }
    assert api == {name: library[name] for name in api}
    assert set(api) == set(library), "an option the library has and the API lacks, or the reverse"
