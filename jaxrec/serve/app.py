"""The web service of a trained model (FastAPI, served by uvicorn): ``/recommend``, ``/predict``, ``/items``,
``/health`` and the demo page at ``/``.

Every request is checked before it reaches the model: a body over the size limit is a 413, one sent without the
JSON content-type a 415, a body that is not the documented JSON (or not JSON) a 422 naming the field and the value,
a rating outside the scale or too many items a 422 with the value; unknown items are ignored and counted in the
answer (a user with none known gets the meta-learned prior's list, the cold start a service must answer, where
``jaxrec recommend`` takes a file of nothing known for a mistake and says so). Checked requests are micro-batched
(:class:`~jaxrec.serve.batching.MicroBatcher`) into the compiled calls of a :class:`~jaxrec.serve.engine.ServingModel`.
The OpenAPI description is at ``/openapi.json`` (and browsable at ``/docs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxrec._version import __version__
from jaxrec.serve.batching import MicroBatcher
from jaxrec.serve.engine import ServingModel
from jaxrec.serve.requests import Catalogue, RequestError

__all__ = ["BodyLimit", "create_app"]

logger = logging.getLogger(__name__)


def _integral_number(value):
    """An item id sent as an integral number (``7.0``: JSON from JavaScript, a float column) is the integer ``7``,
    as the string ``"7.0"`` already is; any other number stays what it is, and is refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


ItemId = Annotated[StrictInt | Annotated[StrictStr, Field(max_length=256)], BeforeValidator(_integral_number)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class Rating(BaseModel):
    """One rating of a new user."""

    model_config = ConfigDict(extra="forbid")
    item: ItemId = Field(description="the item's raw id, as in the training data")
    rating: Annotated[float, Field(allow_inf_nan=False, strict=True)] = Field(description="the rating (a number)")


class UserRequest(BaseModel):
    """A new user: their ratings (explicit or rated data) or interactions (implicit models)."""

    model_config = ConfigDict(extra="forbid")
    ratings: list[Rating] | None = Field(None, description="[{item, rating}, ...]")
    interactions: list[ItemId] | None = Field(
        None,
        description="item ids the user interacted with, oldest first (implicit models; a run with support_recency "
        "weighs the newest most)",
    )
    weights: list[Annotated[float, Field(allow_inf_nan=False, strict=True, gt=0)]] | None = Field(
        None, description="each interaction's weight (models trained on weighted logs: counts, plays); default 1 each"
    )
    features: dict[str, StrictInt | FiniteFloat | Annotated[StrictStr, Field(max_length=256)] | None] | None = Field(
        None,
        description="the user's side features, {column: value}, for a model trained with them (demographics, "
        "--user-features; /health lists them); a value no training user had, or one not sent, is read as unknown",
    )


class RecommendRequest(UserRequest):
    """A new user, ``k``, and the items not to recommend them."""

    k: StrictInt = Field(10, ge=1, description="how many recommendations")
    exclude: list[ItemId] | None = Field(
        None,
        description="item ids never to recommend to this user (bought elsewhere, out of stock); unknown ids are "
        "counted and ignored",
    )


class PredictRequest(UserRequest):
    """A new user and the items to score for them."""

    candidates: list[ItemId] = Field(min_length=1, description="the items to score")


#: the tags pydantic puts in the location of an error of one member of a union (an item id: int or str)
_UNION_TAGS = re.compile(r"^(constrained-)?(int|str|float)$")


def _not_a_rating(error) -> bool:
    """Whether a validation error is an entry of ``ratings`` without its ``rating`` or with a field a rating does
    not have (``weight``): an item list in the rating form, where a top-N model takes ``interactions``."""
    loc = tuple(error.get("loc", ()))
    if loc[:2] != ("body", "ratings"):
        return False
    return error.get("type") == "extra_forbidden" or (error.get("type") == "missing" and loc[-1] == "rating")


def _first_error(errors) -> str:
    """One line for the first validation error: where it is and what is wrong.

    A value of a union (an item id: an integer or a string) that fails every member gets an error per member; a
    "not of this type" one says less than the member that took the type and refused the value (a string too long),
    so a type error comes first only when there is no other. The member's tag is left out of the location."""
    if not errors:
        return "invalid request"

    def place(e):
        return [str(p) for p in e.get("loc", ()) if p != "body" and not _UNION_TAGS.match(str(p))]

    same = [e for e in errors if place(e) == place(errors[0])]  # the first value's errors, one per union member
    error = min(same, key=lambda e: str(e.get("type", "")).endswith("_type"))
    where = ".".join(place(error)) or "body"
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    kinds = [_TYPE_NAMES.get(str(e.get("type"))) for e in same]
    if len(same) > 1 and all(kinds):  # a value of none of a union's types: each member's "should be" is half
        return f"{where}: should be {' or '.join(kinds)}, got {_shown(error.get('input'))}"
    got = f", got {_shown(error['input'])}" if "input" in error and not isinstance(error["input"], dict | list) else ""
    return f"{where}: {error.get('msg', 'invalid')}{got}"


#: what a value of each type error's type is, for a value that is none of a union's types
_TYPE_NAMES = {"int_type": "an integer", "string_type": "a string", "float_type": "a number"}


def _shown(value) -> str:
    """A value as JSON writes it (``null``, ``true``, ``"x"``), shortened."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _features_report(features: dict | None, unknown: list[str], catalogue: Catalogue) -> dict:
    """What a request's side features were read as: how many were sent, those whose values were read as unknown,
    and the model's features not sent (also unknown); nothing for a model without user features."""
    if not catalogue.user_features:
        return {}
    not_given = catalogue.features_not_given(features)
    return {
        "features": len(catalogue.user_features) - len(not_given),
        "unknown_feature_values": unknown,
        "features_not_given": not_given,
    }


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read whole, and one whose
    next part does not arrive within ``timeout`` seconds 408 (a client that sends its headers and stalls would hold
    its connection, one of the server's limited many, for ever).

    The declared ``Content-Length`` is checked first; a body without one (chunked) is counted as it arrives.
    """

    def __init__(self, app, limit: int, timeout: float = 30.0):
        self.app, self.limit, self.timeout = app, int(limit), float(timeout)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _plain(send, 400, "the Content-Length header is not a number")
            if size > self.limit:
                return await _plain(send, 413, f"the body is {size} bytes; the limit is {self.limit}")
        received = 0

        async def counted():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise HTTPException(408, f"the body stopped arriving for {self.timeout:g} s") from None
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"the body is over the limit of {self.limit} bytes")
            return message

        return await self.app(scope, counted, send)


def _json_media_type(kind: str) -> bool:
    """Whether FastAPI reads a body of this content-type as JSON: ``application/json`` or ``application/*+json``."""
    main, _, sub = kind.split(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _parse_failure(cause: BaseException) -> str:
    """Why a body that JSON's grammar does not refuse could not be read (FastAPI says only that it could not)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text: byte {cause.object[cause.start : cause.start + 1]!r} at {cause.start}"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    return str(cause) or type(cause).__name__


async def _plain(send, status: int, message: str) -> None:
    body = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})


def create_app(
    model: ServingModel,
    *,
    max_wait: float = 0.002,
    max_body_bytes: int = 256 * 1024,
    body_timeout: float = 30.0,
) -> FastAPI:
    """The service of a warmed-up :class:`~jaxrec.serve.engine.ServingModel`.

    Args:
      model: the model (call its ``warm_up`` first, so that no request waits on compilation).
      max_wait: how long (seconds) a request waits for others to share its compiled call.
      max_body_bytes: the largest request body accepted.
      body_timeout: how long (seconds) the next part of a request's body may take to arrive (else a 408).

    Returns:
      The FastAPI application (run it with uvicorn, or :func:`jaxrec.serve.run_server`).
    """
    catalogue = Catalogue(model.trained)
    max_items = model.support_sizes[-1]

    batcher = MicroBatcher(model.rank, max_batch=model.batch_sizes[-1], max_wait=max_wait)
    served = {"requests": 0, "rejected": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="jaxrec",
        version=__version__,
        description="Cold-start recommendations: the meta-learned model adapted to a new user's few ratings.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=max_body_bytes, timeout=body_timeout)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        served["rejected"] += 1
        kind = request.headers.get("content-type", "")
        if isinstance(exc.body, bytes | bytearray) and not _json_media_type(kind):  # FastAPI left the body unread
            # (curl -d sends a form's type): every field would seem missing
            return JSONResponse(
                {
                    "error": f"the body must be JSON, sent with the header content-type: application/json (got "
                    f"{kind or 'no content-type'!r})"
                },  # fmt: skip
                status_code=415,
            )
        errors = exc.errors()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:10]]
        said = _first_error(errors)
        if catalogue.implicit and any(_not_a_rating(e) for e in errors):
            # items sent as ratings without values (or with a weight): a top-N model takes them as interactions
            weights = " and 'weights' ([number, ...], one per item)" if catalogue.weighted else ""
            said += f" (this model ranks from interactions: send 'interactions' ([item, ...]){weights})"
        return JSONResponse({"error": said, "detail": detail}, status_code=422)

    @app.exception_handler(RequestError)
    async def unusable(request: Request, exc: RequestError):
        served["rejected"] += 1
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        served["rejected"] += 1
        cause = exc.__cause__
        if exc.status_code == 400 and cause is not None:  # FastAPI's parse of the body failed past JSON's grammar
            return JSONResponse({"error": f"the body is not valid JSON ({_parse_failure(cause)})"}, status_code=422)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # a bug, not a bad request: logged, and said so
        logger.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def check(body: UserRequest):
        ratings = None if body.ratings is None else [(r.item, r.rating) for r in body.ratings]
        return catalogue.support(ratings, body.interactions, max_items, body.weights)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("jaxrec.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/health")
    async def health():
        """The model served and the service's counters."""
        trained = model.trained
        return {
            "status": "ok",
            "version": __version__,
            "model": trained.config.model.name,
            "algorithm": trained.config.meta.algorithm,
            "step": int(trained.step),
            "feedback": "implicit" if catalogue.implicit else "explicit",
            # what ranks: the adapted model, the hybrid the run was trained with (z-scores, the partner weighted), or
            # its re-ranking (the adapted model's top candidates re-scored by the adapted re-ranker)
            "ranking": "rerank" if model.reranker else "maml" if model.hybrid is None else model.hybrid.name,
            "hybrid_weight": None if model.hybrid is None else model.hybrid.weight,
            # the run's re-ranker, whether it lists (the validation users' choice, or forced) and their figures
            "reranker": None
            if trained.reranker is None
            else {
                "model": trained.reranker.name,
                "candidates": trained.reranker.candidates,
                "lists": model.reranker is not None,
                "validation": trained.reranker.validation,
            },
            "rating_range": catalogue.rating_range,
            "positive_threshold": catalogue.positive_threshold,
            "weighted": catalogue.weighted,
            "items": len(catalogue),
            "items_added": int(trained.items_added),  # after training, from their features (--new-items)
            "titles": catalogue.titles is not None,
            "max_k": model.max_k,
            "max_items": max_items,
            "max_candidates": model.max_probe,
            "excluded_items": int(model.excluded.sum()),
            "user_features": catalogue.user_features,
            "buckets": {"batch": list(model.batch_sizes), "support": list(model.support_sizes)},
            "compiled_shapes": model.compiled_shapes(),
            "devices": 1 if model.mesh is None else int(model.mesh.size),
            "requests": served["requests"],
            "rejected": served["rejected"],
            "batches": batcher.batches,
        }

    def finite(ranked):
        if not ranked.finite:
            raise RequestError(
                "the model's scores for these items are not finite numbers: the weights or ratings sent are too large "
                "for its float32 arithmetic; scale them down"
            )
        return ranked

    @app.get("/items")
    async def items(
        q: Annotated[str, Query(max_length=200, description="text in the title (or id)")] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ):
        """Search the catalogue by title (case-insensitive; titles that start with ``q`` first)."""
        found = catalogue.search(q, limit)
        return {"query": q, "items": [catalogue.item(c) for c in found]}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        """The top-k items the new user has not rated, with the adapted model's scores. A user none of whose items
        the catalogue knows (or who sends none: a visitor with no history) gets the model's list before adaptation,
        what it recommends to anyone, and ``input.used`` 0 says so."""
        started = time.perf_counter()
        if body.k > model.max_k:
            raise RequestError(f"k: at most {model.max_k}, got {body.k}")
        support = check(body)
        if body.exclude:
            support = catalogue.excluding(support, body.exclude, max_items)
        slots, unknown = catalogue.feature_slots(body.features)
        ranked = finite(await batcher.submit(catalogue.user_input(support, body.k, user_slots=slots)))
        served["requests"] += 1
        return {
            "recommendations": [catalogue.item(c, s) for c, s in zip(ranked.codes, ranked.scores, strict=True)],
            "k": body.k,
            "feedback": "implicit" if catalogue.implicit else "explicit",
            "input": {**support.report(), **_features_report(body.features, unknown, catalogue)},
            "latency_ms": round((time.perf_counter() - started) * 1e3, 3),
        }

    @app.post("/predict")
    async def predict(body: PredictRequest):
        """The adapted model's scores of the given candidate items (unknown ones come back with a null score)."""
        started = time.perf_counter()
        support = check(body)
        if len(body.candidates) > model.max_probe:
            raise RequestError(f"candidates: at most {model.max_probe}, got {len(body.candidates)}")
        codes = [catalogue.code(c) for c in body.candidates]
        known = [c for c in codes if c is not None]
        slots, unknown = catalogue.feature_slots(body.features)
        ranked = finite(await batcher.submit(catalogue.user_input(support, 1, probe=known, user_slots=slots)))
        scores = iter(ranked.probe_scores)
        served["requests"] += 1
        out = []
        for raw, code in zip(body.candidates, codes, strict=True):
            out.append(catalogue.item(code, float(next(scores))) if code is not None else {"item": raw, "score": None})
        return {
            "scores": out,
            "unknown_candidates": sum(c is None for c in codes),
            "input": {**support.report(), **_features_report(body.features, unknown, catalogue)},
            "latency_ms": round((time.perf_counter() - started) * 1e3, 3),
        }

    return app
