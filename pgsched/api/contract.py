"""The API keeps to its OpenAPI document, also where Litestar 2 is more lenient than the document
or says less than the app does. Each point was found by schemathesis (tests/test_api_schemathesis.py):

- Request bodies are checked strictly: every JSON value must have the type the document gives
  it. Litestar converts leniently ("5" for an integer, the number 0 for a time: 1970), which
  accepts requests the document calls invalid.
- A query parameter the operation does not document is refused (400 naming it), as unknown
  body fields are: a misspelt filter (?staus=failed) must not silently list every run.
- The document says that request bodies refuse unknown fields (additionalProperties: false).
- The automatic OPTIONS answer names every method of its path in Allow; Litestar's names only
  those of the first handler registered on the path (Litestar issue #4169, fixed in 3.x).

The document is the source of truth for the parameters; the body models for the bodies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import SerializationException, ValidationException
from litestar.routes import HTTPRoute

from pgsched.api.schemas import Request as RequestBody

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.spec import OpenAPI
    from litestar.types import Message, Scope

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# msgspec names the place of an error at the end of its message: "Expected `int`, got `str` - at `$.priority`"
_ERROR_AT = re.compile(r"^(?P<message>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)


def document_strict_request_bodies(document: OpenAPI) -> None:
    """Mark every request body model's schema ``additionalProperties: false``."""
    schemas = (document.components.schemas if document.components else None) or {}
    for model in RequestBody.__subclasses__():
        schema = schemas.get(model.__name__)
        if schema is not None:
            schema.additional_properties = False


async def enforce_the_document(request: Request[Any, Any, Any]) -> None:
    """The app's ``before_request`` hook: runs after authentication, before Litestar parses."""
    _refuse_undocumented_query_parameters(request)
    model = _body_model(request.route_handler)
    if model is not None:
        await _check_body_types(request, model)


def _refuse_undocumented_query_parameters(request: Request[Any, Any, Any]) -> None:
    documented = _query_parameters(request.app).get((request.scope.get("path_template", ""), request.method))
    if documented is None:  # not in the document (the document itself, its viewers)
        return
    for name in request.query_params:
        if name not in documented:
            takes = ", ".join(sorted(documented)) or "none"
            raise _invalid(request, name, f"unknown query parameter {name!r}; this operation takes: {takes}", "query")


def _query_parameters(app: Litestar) -> dict[tuple[str, str], frozenset[str]]:
    """Each operation's documented query parameters, by (path template, method); computed once."""
    known: dict[tuple[str, str], frozenset[str]] | None = getattr(app.state, "documented_query_parameters", None)
    if known is None:
        known = {}
        for path, item in (app.openapi_schema.paths or {}).items():
            for method in _METHODS:
                operation = getattr(item, method, None)
                if operation is not None:
                    known[(path, method.upper())] = frozenset(
                        parameter.name
                        for parameter in operation.parameters or []
                        if getattr(parameter, "param_in", None) == "query"
                    )
        app.state.documented_query_parameters = known
    return known


def _body_model(handler: HTTPRouteHandler) -> type[RequestBody] | None:
    data = handler.parsed_fn_signature.parameters.get("data")
    model = data.annotation if data is not None else None
    return model if isinstance(model, type) and issubclass(model, RequestBody) else None


async def _check_body_types(request: Request[Any, Any, Any], model: type[RequestBody]) -> None:
    if not await request.body():
        return  # Litestar's own parsing says that a body is required
    try:
        body = await request.json()  # cached: Litestar's parsing reads it from there
    except SerializationException:
        return  # malformed JSON: Litestar's own parsing answers it
    try:
        msgspec.convert(body, model, strict=True)
    except msgspec.ValidationError as exc:
        located = _ERROR_AT.match(str(exc))
        message, path = (located["message"], located["path"]) if located else (str(exc), "")
        # No path: the body as a whole (not an object, a field missing or unknown); errors.py
        # names the field from the message, as it does for Litestar's own body errors.
        raise _invalid(request, path or "data", message, "body") from None


def _invalid(request: Request[Any, Any, Any], key: str, message: str, source: str) -> ValidationException:
    return ValidationException(
        detail=f"Validation failed for {request.method} {request.url.path}",
        extra=[{"key": key, "message": message, "source": source}],
    )


def _allowed_methods(app: Litestar) -> dict[str, bytes]:
    """The Allow header of every HTTP path, by path template (``/jobs/{name}``)."""
    return {
        route.path_format: ", ".join(sorted(route.methods)).encode()
        for route in app.routes
        if isinstance(route, HTTPRoute)
    }


async def correct_allow_header(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: OPTIONS answers name every method their path has."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    app = scope["app"]
    allowed: dict[str, bytes] | None = getattr(app.state, "allowed_methods", None)
    if allowed is None:  # the routes are final once the app serves: computed on first use
        allowed = app.state.allowed_methods = _allowed_methods(app)
    methods = allowed.get(scope.get("path_template", ""))
    if methods is not None:
        headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"allow"]
        message["headers"] = [*headers, (b"allow", methods)]
