"""`AdminAPI`: Kong's Admin API as a plain ASGI app, editing a gateway through a store.

    admin = AdminAPI(gateway)                 # entities kept in memory
    admin = AdminAPI(gateway, store=store)    # or in a shared ConfigStore

Serve it on its own port (`uvicorn`, hypercorn) or mount it; keep it off public networks:
like Kong OSS it has no authentication unless given a `token`.

Every write goes the same way, whatever the entity: under a lock, take the current
documents (reloaded if the store's revision moved), apply the change to a copy, build the
Configuration from it (which validates everything, cross-entity rules included), write the
changed documents to the store if its revision is still the one read (reloading and trying
once more if not), and only then swap the gateway to the new configuration. A change that
fails validation or cannot be written changes neither the store nor the gateway.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
import attrs

from .._config import dump, load
from .._entities import Target, check_sni_name
from .._exceptions import ConfigurationError
from .._gateway import Gateway
from .._snapshot import Snapshot
from .._types import Receive, Scope, Send, null_lifespan
from ..plugins import _registry
from ..stores._base import StoreError
from ..stores._config_store import Change, ConfigStore, MemoryConfigStore, RevisionConflict
from . import _errors
from ._body import convert_fields, convert_plugin, parse_body
from ._errors import ApiError, not_found
from ._info import configuration_hash, declarative, node_info, schema, yaml_text
from ._kinds import Kind, kinds, looks_like_id
from ._model import Entities, InvalidEntities, configuration, documents, now
from ._openapi import openapi
from ._paging import page

__all__ = ["AdminAPI"]

logger = logging.getLogger("pygateway.admin")

_READS = frozenset({"GET", "HEAD"})


@attrs.frozen
class Request:
    method: str
    segments: tuple[str, ...]
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: dict[str, Any]
    form: bool


@attrs.frozen
class Response:
    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


#: What a change did: the (kind, id) pairs it wrote or deleted; the first is the entity the
#: request is about (errors on it are reported as its own fields).
Touched = list[tuple[str, str]]


class AdminAPI:
    """Kong's Admin API for `gateway`, keeping the entities in `store` (in memory by
    default). `token`: requests must carry it (`Kong-Admin-Token: <token>` or
    `Authorization: Bearer <token>`). `read_only`: only reads are answered."""

    #: The largest request body read, in bytes (a whole declarative configuration for
    #: `POST /config` fits); a larger one is answered 413 unread.
    max_body_size = 64 * 1024 * 1024

    def __init__(
        self,
        gateway: Gateway,
        store: ConfigStore | None = None,
        *,
        token: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.gateway = gateway
        self.store = store if store is not None else MemoryConfigStore()
        self.token = token
        self.read_only = read_only
        self.kinds = kinds()
        self._by_path = {k.path: k for k in self.kinds.values() if k.name != "targets"}
        self._entities: Entities = {}
        self._revision = -1  # not loaded yet
        self._lock: anyio.Lock | None = None

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await null_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                await _send(send, Response(413, {"message": "Request body too large"}))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            response = await self.handle(scope, body)
        except Exception:
            # The error boundary: answer 500 (as Kong does), then let the server see it.
            await _send(send, Response(500, {"message": "An unexpected error occurred"}))
            raise
        await _send(send, response, head=scope["method"].upper() == "HEAD")

    async def handle(self, scope: Scope, body: bytes) -> Response:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._authorize(headers)
            method = scope["method"].upper()
            method = "GET" if method == "HEAD" else method
            path = scope.get("path", "/")
            raw = scope.get("raw_path") or path.encode("utf-8")
            raw = raw.split(b"?", 1)[0]
            segments = tuple(unquote(s.decode("latin-1")) for s in raw.strip(b"/").split(b"/") if s)
            validating = segments[:1] == ("schemas",) and segments[-1:] == ("validate",)
            if self.read_only and method not in _READS and not validating:
                raise ApiError(405, {"message": "the Admin API is read-only"})
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            data, form = parse_body(headers.get("content-type", ""), body)
            request = Request(method, segments, path, query, headers, data, form)
            return await self.dispatch(request)
        except ApiError as exc:
            return Response(exc.status, exc.body)
        except StoreError:
            logger.exception("the configuration store failed")
            return Response(500, {"message": "An unexpected error occurred"})

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if self.token is None:
            return
        given = headers.get("kong-admin-token", "")
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if not given and scheme.lower() == "bearer":
            given = credentials.strip()
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            raise ApiError(401, {"message": "Unauthorized"})

    # -- routing --------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        segments, method = request.segments, request.method
        await self._ensure_current()
        match segments:
            case ():
                return _only(method, "GET", lambda: Response(200, self.info()))
            case ("status",):
                return _only(method, "GET", lambda: Response(200, self.status()))
            case ("plugins", "enabled"):
                enabled = {"enabled_plugins": sorted(_registry.available())}
                return _only(method, "GET", lambda: Response(200, enabled))
            case ("config",):
                if method == "POST":
                    return await self.post_config(request)
                return _only(method, "GET", lambda: Response(200, self.get_config(request)))
            case ("openapi.json",):
                return _only(method, "GET", lambda: Response(200, openapi(self)))
            case ("tags",):
                return _only(method, "GET", lambda: Response(200, self.tags(request, None)))
            case ("tags", tag):
                return _only(method, "GET", lambda: Response(200, self.tags(request, tag)))
            case ("schemas", entity, "validate"):
                if method != "POST":
                    raise _method_not_allowed()
                return await self.validate(request, entity)
            case ("schemas", *rest):
                return _only(method, "GET", lambda: Response(200, schema(self.kinds, rest)))
            case ("upstreams", key, "health"):
                return _only(method, "GET", lambda: self.health(key, request))
            case ("upstreams", key, "targets", "all"):
                return _only(method, "GET", lambda: self.all_targets(key, request))
            case ("upstreams", key, "targets", target, *address, ("healthy" | "unhealthy") as s):
                if method != "POST" or len(address) > 1:
                    raise _method_not_allowed()
                return self.set_health(key, target, address, s == "healthy")
        kind = self._by_path.get(segments[0]) if segments else None
        if kind is None:
            raise not_found()
        if len(segments) == 1:
            return await self.collection(request, kind, None)
        parent_doc = self.find(kind, segments[1])
        if len(segments) == 2:
            return await self.entity(request, kind, segments[1], parent_doc, None)
        child, field = self._child(kind, segments[2])
        if child is None:
            if segments[2] in kind.parents and len(segments) == 3:
                return _only(method, "GET", lambda: self.referenced(kind, parent_doc, segments[2]))
            raise not_found()
        if parent_doc is None:
            raise not_found()
        scope = (field, parent_doc["id"])
        if len(segments) == 3:
            return await self.collection(request, child, scope)
        if len(segments) == 4:
            return await self.entity(request, child, segments[3], None, scope)
        raise not_found()

    def _child(self, parent: Kind, segment: str) -> tuple[Kind | None, str]:
        for kind in self.kinds.values():
            if kind.nested == segment:
                for field, target in kind.parents.items():
                    if target == parent.name:
                        return kind, field
        return None, ""

    # -- reading --------------------------------------------------------------------------

    def find(
        self, kind: Kind, key: str, scope: tuple[str, str] | None = None
    ) -> dict[str, Any] | None:
        """The entity `key` names (its id, or its endpoint key; a certificate, one of its
        SNIs' names), within `scope` if given."""
        by_id = self._entities.get(kind.name, {})
        candidates = [by_id[key]] if key in by_id else []
        if not candidates and kind.key and not looks_like_id(key):
            wanted: Any = key
            if kind.name == "targets":
                try:
                    wanted = Target(key).target
                except ConfigurationError:
                    return None
            candidates = [d for d in by_id.values() if d.get(kind.key) == wanted]
        if not candidates and kind.name == "certificates" and not looks_like_id(key):
            # Kong: a certificate may be named by one of its SNIs.
            sni = self.find(self.kinds["snis"], key)
            owner = _ref_id(sni.get("certificate")) if sni is not None else None
            candidates = [by_id[owner]] if owner in by_id else []
        for doc in candidates:
            if scope is None or _ref_id(doc.get(scope[0])) == scope[1]:
                return doc
        return None

    def referenced(self, kind: Kind, doc: Mapping[str, Any] | None, field: str) -> Response:
        """`GET /routes/{r}/service`: the entity a reference points at."""
        if doc is None:
            raise not_found()
        target = self.kinds[kind.parents[field]]
        ref = _ref_id(doc.get(field))
        found = self._entities.get(target.name, {}).get(ref or "")
        if found is None:
            raise not_found()
        return Response(200, self.show(target, found))

    def show(self, kind: Kind, doc: Mapping[str, Any]) -> dict[str, Any]:
        """`doc` as the API shows it; a certificate with the names of its SNIs (`snis`,
        Kong's shorthand)."""
        out = kind.show(doc)
        if kind.name == "certificates":
            out["snis"] = sorted(
                d["name"]
                for d in self._entities.get("snis", {}).values()
                if _ref_id(d.get("certificate")) == doc["id"]
            )
        return out

    async def collection(
        self, request: Request, kind: Kind, scope: tuple[str, str] | None
    ) -> Response:
        if request.method == "GET":
            return Response(200, self.page(request, kind, scope))
        if request.method == "POST":
            doc = self._document(kind, request)
            if scope is not None:
                doc[scope[0]] = {"id": scope[1]}
            return await self.create(kind, doc)
        raise _method_not_allowed()

    def page(self, request: Request, kind: Kind, scope: tuple[str, str] | None) -> Any:
        docs = [
            d
            for _, d in sorted(self._entities.get(kind.name, {}).items())
            if scope is None or _ref_id(d.get(scope[0])) == scope[1]
        ]
        if kind.name == "consumers" and "custom_id" in request.query:
            docs = [d for d in docs if d.get("custom_id") == request.query["custom_id"]]
        return page(docs, request.query, request.path, lambda d: self.show(kind, d))

    def all_targets(self, key: str, request: Request) -> Response:
        """`GET /upstreams/{u}/targets/all`: every target of the upstream, weight 0 ones
        included. pygateway keeps no history of targets, so this is the same listing as
        `/upstreams/{u}/targets` (as in Kong 3, which keeps none either)."""
        upstream = self.find(self.kinds["upstreams"], key)
        if upstream is None:
            raise not_found()
        targets = self.page(request, self.kinds["targets"], ("upstream", upstream["id"]))
        return Response(200, targets)

    def tags(self, request: Request, tag: str | None) -> Any:
        """`GET /tags` and `/tags/{tag}`: one row per tag of every tagged entity (of `tag`
        only when given), in Kong's shape, a page at a time in (tag, kind, id) order."""
        rows = [
            {"id": "\x1f".join((t, kind, id_)), "tag": t, "entity_name": kind, "entity_id": id_}
            for kind, by_id in self._entities.items()
            for id_, doc in by_id.items()
            for t in dict.fromkeys(doc.get("tags") or ())
            if isinstance(t, str) and (tag is None or t == tag)
        ]
        rows.sort(key=lambda row: row["id"])
        query = {k: v for k, v in request.query.items() if k != "tags"}
        return page(rows, query, request.path, _tag_row)

    async def entity(
        self,
        request: Request,
        kind: Kind,
        key: str,
        found: dict[str, Any] | None,
        scope: tuple[str, str] | None,
    ) -> Response:
        if scope is not None:
            found = self.find(kind, key, scope)
        method = request.method
        if method == "GET":
            if found is None:
                raise not_found()
            return Response(200, self.show(kind, found))
        if method == "DELETE":
            if found is not None:
                await self.delete(kind, found["id"])
            return Response(204)
        if method == "PATCH":
            if found is None:
                raise not_found()
            doc = _merge(found, self._document(kind, request, found))
            doc["id"] = found["id"]
            return await self.update(kind, doc, 200)
        if method == "PUT":
            doc = self._document(kind, request)
            if found is not None:
                doc["id"] = found["id"]
                doc["created_at"] = found.get("created_at")
            elif looks_like_id(key):
                doc["id"] = key
            elif kind.key is None and kind.name != "certificates":
                raise not_found()
            if kind.key is not None and not looks_like_id(key):
                doc[kind.key] = key  # the name in the URL wins, as in Kong
            if scope is not None:
                doc[scope[0]] = {"id": scope[1]}
            if kind.name == "certificates":
                doc["snis"] = _put_names(doc.get("snis"), None if looks_like_id(key) else key)
            return await self.update(kind, doc, 200)
        raise _method_not_allowed()

    def _document(
        self, kind: Kind, request: Request, found: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The request body as a document of `kind` (form strings converted; a plugin's
        config by the fields of the plugin it names, or else of the one `found` is)."""
        body = dict(request.body)
        if request.form:
            if kind.name == "plugins":
                body = convert_plugin(body, body.get("name", (found or {}).get("name")))
            else:
                body = convert_fields(kind.cls, body)
        for key in ("created_at", "updated_at"):
            body.pop(key, None)
        return body

    # -- writing --------------------------------------------------------------------------

    async def create(self, kind: Kind, doc: dict[str, Any]) -> Response:
        touched = await self._write(self._creation(kind, doc))
        return Response(201, self.show(kind, self._entities[kind.name][touched[0][1]]))

    async def validate(self, request: Request, name: str) -> Response:
        """`POST /schemas/{entity}/validate` (and `/schemas/plugins/validate`): check the
        body as creating the entity would, with the same errors, and write nothing."""
        kind = self.kinds.get(name)
        if kind is None:
            raise ApiError(404, {"message": f"No entity named '{name}'"})
        edit = self._creation(kind, self._document(kind, request))
        async with self._locked():
            await self._sync()
            work = copy.deepcopy(self._entities)
            touched = edit(work)
            try:
                configuration(work)
            except InvalidEntities as exc:
                raise _invalid(exc, touched[0]) from None
        return Response(200, {"message": "schema validation successful"})

    def _creation(self, kind: Kind, doc: dict[str, Any]) -> Callable[[Entities], Touched]:
        """The edit that creates `doc` (given an id if it has none)."""
        if "id" in doc and not (isinstance(doc["id"], str) and looks_like_id(doc["id"])):
            raise _errors.schema_violation([(("id",), "expected a valid UUID")])
        doc.setdefault("id", str(uuid.uuid4()))

        def edit(work: Entities) -> Touched:
            if doc["id"] in work.get(kind.name, {}):
                raise _errors.primary_key_violation(doc["id"])
            return self._put(work, kind, doc)

        return edit

    async def update(self, kind: Kind, doc: dict[str, Any], status: int) -> Response:
        doc.setdefault("id", str(uuid.uuid4()))
        if not (isinstance(doc["id"], str) and looks_like_id(doc["id"])):
            raise _errors.schema_violation([(("id",), "expected a valid UUID")])
        touched = await self._write(lambda work: self._put(work, kind, doc))
        return Response(status, self.show(kind, self._entities[kind.name][touched[0][1]]))

    async def delete(self, kind: Kind, id_: str) -> None:
        def edit(work: Entities) -> Touched:
            touched: Touched = []
            self._remove(work, kind, id_, touched)
            return touched

        await self._write(edit)

    def _remove(self, work: Entities, kind: Kind, id_: str, touched: Touched) -> None:
        for child, field in kind.restrict:
            if any(_ref_id(d.get(field)) == id_ for d in work.get(child, {}).values()):
                raise _errors.referenced_by(child, kind.name)
        work.get(kind.name, {}).pop(id_, None)
        touched.append((kind.name, id_))
        for child, field in kind.cascade:
            for cid, d in list(work.get(child, {}).items()):
                if _ref_id(d.get(field)) == id_:
                    self._remove(work, self.kinds[child], cid, touched)

    def _put(self, work: Entities, kind: Kind, doc: dict[str, Any]) -> Touched:
        """Store `doc` in `work` after resolving its references and checking uniqueness."""
        doc = dict(doc)
        # `snis` absent: the certificate's SNIs are left as they are; null: all deleted.
        names = doc.pop("snis", _ABSENT) if kind.name == "certificates" else _ABSENT
        for field, parent in kind.parents.items():
            value = doc.get(field)
            if value is not None:
                doc[field] = {"id": self._resolve(work, field, self.kinds[parent], value)}
        self._check_unique(work, kind, doc)
        previous = work.get(kind.name, {}).get(doc["id"], {})
        doc["created_at"] = doc.get("created_at") or previous.get("created_at") or now()
        doc["updated_at"] = now()
        work.setdefault(kind.name, {})[doc["id"]] = doc
        touched: Touched = [(kind.name, doc["id"])]
        if names is not _ABSENT:
            touched += self._put_snis(work, doc["id"], [] if names is None else names)
        return touched

    def _put_snis(self, work: Entities, certificate: str, names: Any) -> Touched:
        """Kong's `snis` shorthand on a certificate: its SNIs become exactly `names` (new
        ones created, missing ones deleted); a name another certificate has is refused."""
        if isinstance(names, str):  # a form's single `snis=name`
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _errors.schema_violation([(("snis",), "expected an array of strings")])
        seen: set[str] = set()
        for name in names:
            # Kong's first check, before any name's own: the list has no name twice.
            if name.lower() in seen:
                raise _errors.schema_violation([(("snis",), f"{name} is duplicated")])
            seen.add(name.lower())
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, name in enumerate(names):
            reason = check_sni_name(name)
            if reason is not None:
                problems.append((("snis", i), reason))
        snis = work.setdefault("snis", {})
        for name in names:
            for d in snis.values():
                owner = _ref_id(d.get("certificate"))
                if _lower(d.get("name")) == name.lower() and owner != certificate:
                    message = f"{name} already associated with existing certificate '{owner}'"
                    problems.append((("snis",), message))
        if problems:
            raise _errors.schema_violation(problems)
        mine = {
            _lower(d.get("name")): id_
            for id_, d in snis.items()
            if _ref_id(d.get("certificate")) == certificate
        }
        touched: Touched = []
        for name, id_ in list(mine.items()):
            if name not in seen:
                del snis[id_]
                touched.append(("snis", id_))
            elif snis[id_].get("name") not in names:  # the same name in another case
                del snis[id_]
                touched.append(("snis", id_))
                del mine[name]
        kind = self.kinds["snis"]
        for name in names:
            if name.lower() not in mine:
                doc = {"id": str(uuid.uuid4()), "name": name, "certificate": {"id": certificate}}
                touched += self._put(work, kind, doc)
        return touched

    def _resolve(self, work: Entities, field: str, parent: Kind, value: Any) -> str:
        """The id a reference (`{"id": ..}`, `{"name": ..}` or a bare name/id) points at."""
        by_id = work.get(parent.name, {})
        if isinstance(value, Mapping):
            ref = dict(value)
            key = value.get("id")
            if not isinstance(key, str):
                key = value.get(parent.key or "name", value.get("name"))
        else:
            key = value
            ref = {"id": value} if isinstance(value, str) and looks_like_id(value) else {}
            ref = ref or {parent.key or "name": value}
        if isinstance(key, str):
            if key in by_id:
                return key
            for id_, d in by_id.items():
                if parent.key and d.get(parent.key) == key:
                    return id_
        raise _errors.foreign_key(field, parent.name, ref)

    def _check_unique(self, work: Entities, kind: Kind, doc: Mapping[str, Any]) -> None:
        others = [d for i, d in work.get(kind.name, {}).items() if i != doc["id"]]
        for field in kind.unique:
            value = doc.get(field)
            if value is None:
                continue
            if kind.name == "targets":
                try:
                    value = Target(str(value)).target
                except ConfigurationError:
                    continue
                upstream = _ref_id(doc.get("upstream"))
                if any(
                    d.get("target") == value and _ref_id(d.get("upstream")) == upstream
                    for d in others
                ):
                    raise _errors.unique_violation({"target": value, "upstream": {"id": upstream}})
            elif kind.name == "snis" and isinstance(value, str):
                # Host names: `Y.test` is taken when `y.test` is.
                if any(_lower(d.get(field)) == value.lower() for d in others):
                    raise _errors.unique_violation({field: value})
            elif any(d.get(field) == value for d in others):
                raise _errors.unique_violation({field: value})
        if kind.name == "acls":
            consumer = _ref_id(doc.get("consumer"))
            if any(
                d.get("group") == doc.get("group") and _ref_id(d.get("consumer")) == consumer
                for d in others
            ):
                key = {"consumer": {"id": consumer}, "group": doc.get("group")}
                raise _errors.unique_violation(key)
        if kind.name == "plugins":
            scope = {k: _ref_id(doc.get(k)) for k in ("route", "service", "consumer")}
            key = {"name": doc.get("name"), **scope}
            for d in others:
                if d.get("name") == key["name"] and all(
                    _ref_id(d.get(k)) == v for k, v in scope.items()
                ):
                    shown: dict[str, Any] = {
                        k: None if v is None else {"id": v} for k, v in scope.items()
                    }
                    shown["name"] = key["name"]
                    raise _errors.unique_violation(shown)

    async def _write(self, edit: Callable[[Entities], Touched]) -> Touched:
        """Apply `edit` to a copy of the documents, validate, store, then configure the
        gateway (see the module's docstring). Returns what `edit` touched."""
        async with self._locked():
            for attempt in (1, 2):
                await self._sync()
                work = copy.deepcopy(self._entities)
                touched = edit(work)
                try:
                    config = configuration(work)
                except InvalidEntities as exc:
                    raise _invalid(exc, touched[0] if touched else None) from None
                normalized = documents(config, previous=work)
                for kind, id_ in touched:
                    doc = normalized.get(kind, {}).get(id_)
                    if doc is not None and id_ in work.get(kind, {}):
                        doc["updated_at"] = work[kind][id_].get("updated_at", doc["updated_at"])
                        work[kind][id_] = doc
                changes = [Change(k, i, work.get(k, {}).get(i)) for k, i in touched]
                try:
                    revision = await self.store.write(changes, expected=self._revision)
                except RevisionConflict:
                    if attempt == 2:
                        raise ApiError(
                            409, {"message": "the configuration changed meanwhile: try again"}
                        ) from None
                    self._revision = -1  # not current: `_sync` reloads
                    continue
                except (TypeError, ValueError) as exc:
                    raise ApiError(400, {"message": f"cannot store the entity: {exc}"}) from None
                self.gateway.configure(config)
                self._entities, self._revision = work, revision
                return touched
        raise AssertionError("unreachable")

    # -- store and gateway in step ------------------------------------------------------

    def _locked(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def _ensure_current(self) -> None:
        async with self._locked():
            await self._sync()

    async def _sync(self) -> None:
        """Load the store if this app has not, or if another writer moved its revision: an
        empty store is seeded from the gateway's configuration; a non-empty one
        configures the gateway."""
        if self._revision >= 0 and await self.store.revision() == self._revision:
            return
        stored = await self.store.load()
        entities = {k: {i: dict(d) for i, d in v.items()} for k, v in stored.entities.items()}
        if stored.revision == 0 and not any(entities.values()):
            seeded = documents(self.gateway.config)
            changes = [Change(k, i, d) for k, v in seeded.items() for i, d in v.items()]
            try:
                revision = await self.store.write(changes, expected=0) if changes else 0
            except RevisionConflict:
                # Another process (a worker, a node starting with us) seeded it first:
                # its configuration wins, as any stored one does.
                await self._sync()
                return
            self._entities, self._revision = seeded, revision
            try:  # run with the ids given to entities that had none, as the API shows them
                self.gateway.configure(configuration(seeded))
            except ConfigurationError as exc:
                logger.warning("kept the gateway's configuration as it was: %s", exc)
            return
        try:
            config = configuration(entities)
        except ConfigurationError as exc:
            logger.error("the stored configuration is invalid, not applied: %s", exc)
            raise ApiError(500, {"message": "the stored configuration is invalid"}) from None
        self.gateway.configure(config)
        self._entities, self._revision = entities, stored.revision

    # -- information ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        settings = {
            "database": self.store.url.split(":", 1)[0] or "memory",
            "admin_read_only": self.read_only,
            "admin_token": self.token is not None,
        }
        return node_info(self.gateway.node_id, self._entities, settings)

    def status(self) -> dict[str, Any]:
        return {
            "database": {"reachable": True},
            "configuration_hash": configuration_hash(self._entities),
            "server": {"revision": self._revision},
        }

    def health(self, key: str, request: Request) -> Response:
        doc = self.find(self.kinds["upstreams"], key)
        if doc is None:
            raise not_found()
        balancer = request.query.get("balancer_health") in ("1", "true")
        return Response(200, self.gateway.upstream_health(doc["name"], balancer=balancer))

    def set_health(self, key: str, target: str, address: list[str], healthy: bool) -> Response:
        upstream = self.find(self.kinds["upstreams"], key)
        if upstream is None:
            raise not_found()
        doc = self.find(self.kinds["targets"], target, ("upstream", upstream["id"]))
        if doc is None:
            raise not_found()
        try:
            self.gateway.set_target_health(
                upstream["name"], doc["target"], healthy, address=address[0] if address else None
            )
        except LookupError as exc:
            raise ApiError(404, {"message": str(exc.args[0])}) from None
        except ValueError as exc:
            raise ApiError(400, {"message": str(exc)}) from None
        return Response(204)

    # -- the whole configuration ----------------------------------------------------------

    def get_config(self, request: Request) -> dict[str, Any]:
        """`GET /config`: the declarative document as YAML text, as Kong answers, when
        PyYAML is installed and the client does not ask for JSON (`Accept:
        application/json`); else the document itself."""
        document = dump(self.gateway.config)
        if "application/json" not in request.headers.get("accept", ""):
            text = yaml_text(document)
            if text is not None:
                return {"config": text}
        return {"config": document}

    async def post_config(self, request: Request) -> Response:
        """Replace every entity with those of a declarative document (validated first)."""
        document = declarative(request.body)
        try:
            config = load(document)
            Snapshot(config)  # the cross-entity rules, with the document's own paths
        except ConfigurationError as exc:
            raise _errors.schema_violation(exc.errors, code=_errors.DECLARATIVE) from None
        entities = documents(config)

        def edit(work: Entities) -> Touched:
            before = [(k, i) for k, by_id in work.items() for i in by_id]
            work.clear()
            work.update(copy.deepcopy(entities))
            after = [(k, i) for k, by_id in entities.items() for i in by_id]
            return list(dict.fromkeys(after + before))

        await self._write(edit)
        entities = self._entities
        listed = {
            kind: [
                self.show(self.kinds[kind], d) if kind in self.kinds else d for d in by_id.values()
            ]
            for kind, by_id in entities.items()
        }
        return Response(201, listed)


# -- helpers ------------------------------------------------------------------------------


async def _send(send: Send, response: Response, *, head: bool = False) -> None:
    payload = b"" if response.body is None else json.dumps(response.body).encode("utf-8")
    headers = [(b"content-type", b"application/json; charset=utf-8")] if payload else []
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(payload)).encode("ascii")))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})


def _tag_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"entity_name": row["entity_name"], "entity_id": row["entity_id"], "tag": row["tag"]}


def _only(method: str, allowed: str, answer: Callable[[], Response]) -> Response:
    if method != allowed:
        raise _method_not_allowed()
    return answer()


def _method_not_allowed() -> ApiError:
    return ApiError(405, {"message": "Method not allowed"})


def _ref_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        id_ = value.get("id")
        return id_ if isinstance(id_, str) else None
    return value if isinstance(value, str) else None


#: The fields that hold records, which PATCH merges field by field (it replaces the others,
#: references and arrays included).
_RECORDS = frozenset({"config", "healthchecks"})


_ABSENT: Any = object()


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _put_names(names: Any, name: str | None) -> Any:
    """Kong's PUT /certificates/{c} `snis`: not given, none (null); given with an SNI name in
    the URL, that name is added to them when missing."""
    if names is None:
        return None
    if isinstance(names, str):  # a form's single `snis=name`
        names = [names]
    mentioned = isinstance(names, list) and any(
        isinstance(n, str) and n.lower() == (name or "").lower() for n in names
    )
    if name is not None and isinstance(names, list) and not mentioned:
        names = [*names, name]
    return names


def _merge(
    base: Mapping[str, Any], patch: Mapping[str, Any], *, deep: bool = False
) -> dict[str, Any]:
    """PATCH: `patch` over `base`, records (a plugin's `config`, an upstream's
    `healthchecks`) merged all the way down, as Kong does."""
    out = dict(base)
    for key, value in patch.items():
        before = out.get(key)
        if (deep or key in _RECORDS) and isinstance(value, Mapping) and isinstance(before, Mapping):
            out[key] = _merge(before, value, deep=True)
        else:
            out[key] = value
    return out


def _invalid(exc: InvalidEntities, about: tuple[str, str] | None) -> ApiError:
    """A failed validation, as a schema violation of the entity the request is about
    (problems elsewhere are listed under `@entity`, naming where they are)."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for p in exc.problems:
        if about is not None and (p.kind, p.id) == about:
            problems.append((p.path, p.message))
        elif p.kind is not None:
            where = f"{p.kind} '{p.id}'" + (f" {_errors.dotted(p.path)}" if p.path else "")
            problems.append(((), f"{where}: {p.message}"))
        else:
            problems.append((p.path, p.message))
    return _errors.schema_violation(problems)
