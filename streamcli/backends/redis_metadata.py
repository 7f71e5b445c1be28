"""``RedisMetadata``: the ``MetadataStore`` on Redis (files, uploads, batches, room members), shared by replicas.

A record is a hash (``file:ID``, ``upload:ID``, ``batch:ID``); sorted sets order them: ``files`` and
``batches`` by minus the creation time (Redis orders equal scores by member, so ``ZRANGE`` gives newest
first, then by id, as the embedded store's ``ORDER BY created_at DESC, id``), ``uploads`` by expiry,
``batches:updated`` by the last update; ``files:ids`` and ``batches:ids`` hold the same ids, all at
score 0, so that ``ZRANGE BYLEX`` finds those that begin with a prefix. ``content:SHA256:SIZE`` holds
the ids of files with that content (``find_file`` checks each record, so an entry a replaced file left
behind matches nothing), ``member:USER`` the rooms a user joined and ``shared:FILE`` the rooms a file
was posted in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from streamcli.backends.base import BatchRecord, FileRecord, UploadRecord
from streamcli.backends.redis_log import PREFIX, shielded

T = TypeVar("T")

#: Records fetched per step when a listing filters.
LIST_STEP = 500


def _key(kind: str, name: str) -> bytes:
    return PREFIX + f"{kind}:{name}".encode()


#: How a hash's value becomes each type of a record's field (the annotations are strings here).
_DECODERS: dict[str, Callable[[bytes], Any]] = {"str": bytes.decode, "int": int, "float": float, "bytes": bytes}

R = TypeVar("R", FileRecord, UploadRecord, BatchRecord)


def _parser(record_type: type[R]) -> Callable[[dict[bytes, bytes]], R]:
    """What turns a hash written by ``_fields`` back into a ``record_type``."""
    decoders = [(field.name.encode(), _DECODERS[str(field.type)]) for field in dataclasses.fields(record_type)]

    def parse(fields: dict[bytes, bytes]) -> R:
        return record_type(*(decode(fields[name]) for name, decode in decoders))

    return parse


_file = _parser(FileRecord)
_upload = _parser(UploadRecord)
_batch = _parser(BatchRecord)


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields as a hash: floats by ``repr`` (they come back exactly), the rest as they are."""
    return {
        field.name: repr(value) if isinstance(value, float) else value
        for field in dataclasses.fields(record)
        for value in (getattr(record, field.name),)
    }


def _put_file(pipe: Any, record: FileRecord) -> None:
    """Queue on ``pipe`` (a transaction) the commands that store ``record``."""
    pipe.hset(_key("file", record.file_id), mapping=_fields(record))
    pipe.zadd(PREFIX + b"files", {record.file_id: -record.created_at})
    pipe.zadd(PREFIX + b"files:ids", {record.file_id: 0})
    pipe.sadd(_key("content", f"{record.sha256}:{record.size}"), record.file_id)


def _delete_upload(pipe: Any, upload_id: str) -> None:
    """Queue on ``pipe`` (a transaction) the commands that forget an upload."""
    pipe.delete(_key("upload", upload_id))
    pipe.zrem(PREFIX + b"uploads", upload_id)


def _oldest_match(records: list[FileRecord], filename: str, sha256: str, size: int, owner: str) -> FileRecord | None:
    """Of ``records`` (in id order), the oldest of this name, content and owner, or None."""
    matching = [r for r in records if (r.filename, r.sha256, r.size, r.owner) == (filename, sha256, size, owner)]
    return min(matching, key=lambda r: r.created_at) if matching else None


#: KEYS: the upload's hash, the uploads' sorted set. ARGV: upload id, expiry, then the hash's fields and values.
#: Records the upload unless its hash exists; returns 1 when it did, else 0.
_START_UPLOAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


class RedisMetadata:
    """A ``MetadataStore`` on one Redis database."""

    def __init__(self, commands: aioredis.Redis) -> None:
        # Any: redis-py types its replies as the union of every reply type of both its clients.
        self._redis: Any = commands
        self._start_upload = commands.register_script(_START_UPLOAD)

    async def _hashes(self, keys: list[bytes]) -> list[dict[bytes, bytes]]:
        """The hashes at ``keys`` in order (empty for those gone meanwhile)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            found: list[dict[bytes, bytes]] = await shielded(pipe.execute())
        return found

    async def _records(self, keys: list[bytes], parse: Callable[[dict[bytes, bytes]], T]) -> list[T]:
        """The records at ``keys`` in order, without those gone meanwhile."""
        return [parse(fields) for fields in await self._hashes(keys) if fields]

    async def _ordered(
        self, index: bytes, kind: str, parse: Callable[[dict[bytes, bytes]], T]
    ) -> AsyncIterator[list[T]]:
        """The records of ``index`` (a sorted set of ids) in its order, a step at a time."""
        start = 0
        while ids := await self._redis.zrange(index, start, start + LIST_STEP - 1):
            yield await self._records([_key(kind, i.decode()) for i in ids], parse)
            start += LIST_STEP

    async def _page(
        self,
        index: bytes,
        kind: str,
        parse: Callable[[dict[bytes, bytes]], T],
        limit: int,
        offset: int,
        keep: Callable[[T], Awaitable[bool]] | None,
    ) -> list[T]:
        """Up to ``limit`` records of ``index`` in its order after the first ``offset`` (of those ``keep``s)."""
        if limit <= 0:
            return []
        if keep is None:
            ids = await self._redis.zrange(index, offset, offset + limit - 1)
            return await self._records([_key(kind, i.decode()) for i in ids], parse)
        found: list[T] = []
        skip = offset
        async for step in self._ordered(index, kind, parse):
            for record in step:
                if not await keep(record):
                    continue
                if skip:
                    skip -= 1
                    continue
                found.append(record)
                if len(found) == limit:
                    return found
        return found

    async def _ids_with_prefix(
        self,
        index: bytes,
        kind: str,
        parse: Callable[[dict[bytes, bytes]], T],
        prefix: str,
        limit: int,
        keep: Callable[[T], Awaitable[bool]] | None,
    ) -> tuple[list[str], int]:
        """The ids of ``index`` (a sorted set of ids, all at score 0) that begin with ``prefix`` (and whose
        records ``keep``s): at most ``limit``, ascending, and how many there are."""
        # Members sort by their bytes; no UTF-8 byte is 0xff, so every id that begins with the prefix sorts
        # below the prefix followed by 0xff.
        start, end = b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"
        if keep is None:
            ids = await self._redis.zrange(index, start, end, bylex=True, offset=0, num=limit) if limit > 0 else []
            return [i.decode() for i in ids], int(await self._redis.zlexcount(index, start, end))
        found: list[str] = []
        total = 0
        while ids := await self._redis.zrange(index, start, end, bylex=True, offset=0, num=LIST_STEP):
            rows = await self._hashes([_key(kind, i.decode()) for i in ids])
            for member, fields in zip(ids, rows, strict=True):
                if fields and await keep(parse(fields)):  # (a record deleted meanwhile: gone)
                    total += 1
                    if len(found) < limit:
                        found.append(member.decode())
            start = b"(" + ids[-1]
        return found, total

    # --- batches ----------------------------------------------------------------------------------

    async def put_batch(self, record: BatchRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key("batch", record.batch_id), mapping=_fields(record))
            pipe.zadd(PREFIX + b"batches", {record.batch_id: -record.created_at})
            pipe.zadd(PREFIX + b"batches:ids", {record.batch_id: 0})
            pipe.zadd(PREFIX + b"batches:updated", {record.batch_id: record.updated_at})
            await shielded(pipe.execute())

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        fields = await self._redis.hgetall(_key("batch", batch_id))
        return _batch(fields) if fields else None

    async def list_batches(self, limit: int, offset: int = 0, *, owner: str | None = None) -> list[BatchRecord]:
        async def owned(record: BatchRecord) -> bool:
            return record.owner == owner

        return await self._page(PREFIX + b"batches", "batch", _batch, limit, offset, None if owner is None else owned)

    async def batch_ids_with_prefix(
        self, prefix: str, limit: int, *, owner: str | None = None
    ) -> tuple[list[str], int]:
        async def owned(record: BatchRecord) -> bool:
            return record.owner == owner

        index = PREFIX + b"batches:ids"
        return await self._ids_with_prefix(index, "batch", _batch, prefix, limit, None if owner is None else owned)

    async def delete_batch(self, batch_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key("batch", batch_id))
            pipe.zrem(PREFIX + b"batches", batch_id)
            pipe.zrem(PREFIX + b"batches:ids", batch_id)
            pipe.zrem(PREFIX + b"batches:updated", batch_id)
            await shielded(pipe.execute())

    async def batches_idle_since(self, before: float) -> list[BatchRecord]:
        ids = await self._redis.zrange(PREFIX + b"batches:updated", "-inf", f"({before!r}", byscore=True)
        return await self._records([_key("batch", i.decode()) for i in ids], _batch)

    # --- files ------------------------------------------------------------------------------------

    async def put_file(self, record: FileRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            _put_file(pipe, record)
            await shielded(pipe.execute())

    async def get_file(self, file_id: str) -> FileRecord | None:
        fields = await self._redis.hgetall(_key("file", file_id))
        return _file(fields) if fields else None

    async def list_files(self, limit: int, offset: int = 0, *, visible_to: str | None = None) -> list[FileRecord]:
        if visible_to is None:
            return await self._page(PREFIX + b"files", "file", _file, limit, offset, None)
        user = visible_to
        rooms = await self._redis.smembers(_key("member", user))

        async def visible(record: FileRecord) -> bool:
            return await self._visible(record, user, rooms)

        return await self._page(PREFIX + b"files", "file", _file, limit, offset, visible)

    async def file_ids_with_prefix(
        self, prefix: str, limit: int, *, visible_to: str | None = None
    ) -> tuple[list[str], int]:
        index = PREFIX + b"files:ids"
        if visible_to is None:
            return await self._ids_with_prefix(index, "file", _file, prefix, limit, None)
        user = visible_to
        rooms = await self._redis.smembers(_key("member", user))

        async def visible(record: FileRecord) -> bool:
            return await self._visible(record, user, rooms)

        return await self._ids_with_prefix(index, "file", _file, prefix, limit, visible)

    async def _visible(self, record: FileRecord, user: str, rooms: set[bytes]) -> bool:
        if record.owner == user:
            return True
        return bool(rooms) and bool(rooms & await self._redis.smembers(_key("shared", record.file_id)))

    async def file_visible_to(self, record: FileRecord, user: str) -> bool:
        return await self._visible(record, user, await self._redis.smembers(_key("member", user)))

    async def add_room_member(self, room_id: str, user: str) -> None:
        await self._redis.sadd(_key("member", user), room_id)

    async def share_file(self, file_id: str, room_id: str) -> None:
        await self._redis.sadd(_key("shared", file_id), room_id)

    async def delete_file(self, file_id: str) -> FileRecord | None:
        async with self._redis.pipeline(transaction=True) as pipe:  # one step: one caller gets the record
            pipe.hgetall(_key("file", file_id))
            pipe.delete(_key("file", file_id))
            pipe.zrem(PREFIX + b"files", file_id)
            pipe.zrem(PREFIX + b"files:ids", file_id)
            fields, *_ = await shielded(pipe.execute())
        if not fields:
            return None
        record = _file(fields)
        await self._redis.srem(_key("content", f"{record.sha256}:{record.size}"), file_id)
        return record

    async def find_file(self, filename: str, sha256: str, size: int, owner: str) -> FileRecord | None:
        ids = await self._redis.smembers(_key("content", f"{sha256}:{size}"))
        records = await self._records([_key("file", i.decode()) for i in sorted(ids)], _file)
        return _oldest_match(records, filename, sha256, size, owner)

    # --- uploads ----------------------------------------------------------------------------------

    async def put_upload(self, record: UploadRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key("upload", record.upload_id), mapping=_fields(record))
            pipe.zadd(PREFIX + b"uploads", {record.upload_id: record.expires_at})
            await shielded(pipe.execute())

    async def start_upload(self, record: UploadRecord) -> bool:
        fields = [item for pair in _fields(record).items() for item in pair]
        started = await self._start_upload(
            keys=[_key("upload", record.upload_id), PREFIX + b"uploads"],
            args=[record.upload_id, repr(record.expires_at), *fields],
        )
        return bool(started)

    async def finish_upload(self, record: FileRecord, upload_id: str) -> FileRecord:
        return await shielded(self._finish_upload(record, upload_id))

    async def store_files(self, records: Sequence[FileRecord]) -> list[FileRecord]:
        # One optimistic transaction per file, in order (each sees the ones before): correct, not one step.
        return [await shielded(self._finish_upload(record, None)) for record in records]

    async def _finish_upload(self, record: FileRecord, upload_id: str | None) -> FileRecord:
        # Optimistic: the lookup and the writes are one step unless a file of the same content is stored
        # meanwhile (its id joins the content set: EXEC then fails, and the lookup is done again).
        content = _key("content", f"{record.sha256}:{record.size}")
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(content)
                    ids = sorted(await pipe.smembers(content))
                    found = [_file(fields) for i in ids if (fields := await pipe.hgetall(_key("file", i.decode())))]
                    existing = _oldest_match(found, record.filename, record.sha256, record.size, record.owner)
                    pipe.multi()
                    if existing is None:
                        _put_file(pipe, record)
                    if upload_id is not None:
                        _delete_upload(pipe, upload_id)
                    await pipe.execute()
                except redis.exceptions.WatchError:
                    continue
                return existing or record

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        fields = await self._redis.hgetall(_key("upload", upload_id))
        return _upload(fields) if fields else None

    async def delete_upload(self, upload_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            _delete_upload(pipe, upload_id)
            await shielded(pipe.execute())

    async def expired_uploads(self, now: float) -> list[UploadRecord]:
        ids = await self._redis.zrange(PREFIX + b"uploads", "-inf", f"({now!r}", byscore=True)
        return await self._records([_key("upload", i.decode()) for i in ids], _upload)
