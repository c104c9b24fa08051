"""Avro single-object encoding of every Herald record, with schema evolution.

Wire format (https://avro.apache.org/docs/1.11.1/specification/#single-object-encoding)::

    C3 01 | CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form (8 bytes,
          | little-endian) | Avro binary body

Every message thus names its writer schema without a schema registry service. Readers look the
fingerprint up in a :class:`SchemaRegistry` (current schemas from ``schemas/avro`` plus older
writer versions from ``schemas/avro/history``) and resolve the writer schema against their own
reader schema, so fields added since are filled with their defaults.

Decoded values are plain Python: strings, ints, lists, dicts, and timezone-aware UTC
``datetime`` objects for ``timestamp-millis`` fields. When encoding, a timestamp may be given
as a ``datetime`` (naive ones are taken as UTC) or as epoch milliseconds; the latter is faster.

Encoding does not run full validation, to stay cheap on the hot path: a wrongly typed value
mostly raises :class:`EncodeError`, but fastavro accepts any iterable for an array (a string
becomes a list of characters) and any int for an ``int`` field. Producers of untrusted input
(the ingest API) validate it first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as schema_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.catalogue import HISTORY_DIR, SCHEMA_DIR, avsc_path

#: The two bytes every single-object encoded record starts with.
MAGIC = b"\xc3\x01"
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MAGIC) + FINGERPRINT_SIZE

#: A decoded record.
Record = dict[str, Any]


class SerdeError(Exception):
    """Base class of every error raised while encoding or decoding a record."""


class NotAvroError(SerdeError):
    """The bytes are not an Avro single-object encoded record (no magic, too short)."""


class UnknownSchemaError(SerdeError):
    """No schema with this fingerprint (or full name) is registered."""

    def __init__(
        self, message: str, *, fingerprint: bytes | None = None, full_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.full_name = full_name


class CorruptRecordError(SerdeError):
    """The header is fine but the body does not decode with the writer schema it names."""


class IncompatibleSchemaError(SerdeError):
    """The writer schema cannot be resolved against the requested reader schema."""


class EncodeError(SerdeError):
    """The record does not match the schema it is being written with."""


@dataclass(frozen=True, eq=False)
class RegisteredSchema:
    """One parsed Avro schema and its single-object encoding header."""

    full_name: str
    fingerprint: bytes
    canonical_form: str
    #: The schema as written in its ``.avsc`` (JSON object), docs and defaults included.
    schema: Mapping[str, Any]
    #: fastavro's parsed form, parsed once and reused for every record.
    parsed: Any
    #: ``MAGIC + fingerprint``: the first ten bytes of every record written with it.
    header: bytes
    source: Path | None = None

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 16 hex digits, in wire (little-endian) byte order."""
        return self.fingerprint.hex()

    @classmethod
    def from_json(cls, schema: Mapping[str, Any], source: Path | None = None) -> RegisteredSchema:
        """Parse a named Avro schema (a record or enum given as a JSON object)."""
        where = f" in {source}" if source else ""
        try:
            # A fresh named-type namespace per schema: RecipientEvent defines herald.Event
            # inline and history files redefine current names, which one shared namespace
            # would reject as redefinitions.
            parsed = parse_schema(dict(schema), named_schemas={})
            canonical = to_parsing_canonical_form(parsed)
        except Exception as exc:
            raise SerdeError(f"invalid Avro schema{where}: {exc}") from exc
        if not isinstance(parsed, dict) or "name" not in parsed:
            raise SerdeError(f"top-level schema{where} must be a named type (record or enum)")
        # fastavro gives the little-endian fingerprint bytes as hex, i.e. wire order.
        fingerprint = bytes.fromhex(schema_fingerprint(canonical, "CRC-64-AVRO"))
        return cls(
            full_name=parsed["name"],
            fingerprint=fingerprint,
            canonical_form=canonical,
            schema=schema,
            parsed=parsed,
            header=MAGIC + fingerprint,
            source=source,
        )

    @classmethod
    def from_file(cls, path: Path) -> RegisteredSchema:
        """Parse an ``.avsc`` file."""
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SerdeError(f"cannot read Avro schema {path}: {exc}") from exc
        if not isinstance(schema, dict):
            raise SerdeError(f"{path} must hold a JSON object (a named Avro schema)")
        return cls.from_json(schema, source=path)


def read_fingerprint(data: bytes | bytearray | memoryview) -> bytes:
    """The writer schema fingerprint named by a record's header; :class:`NotAvroError` if none."""
    if not data:
        # Compacted topics carry tombstones (null values): say so rather than "too short".
        raise NotAvroError("no bytes to decode (a tombstone or empty message?)")
    if bytes(data[:2]) != MAGIC:
        head = bytes(data[:2]).hex(" ").upper()
        hint = " (looks like Confluent Schema Registry framing, magic 00)" if data[0] == 0 else ""
        raise NotAvroError(
            f"record starts with {head}, not the Avro single-object magic C3 01{hint}"
        )
    if len(data) < HEADER_SIZE:
        raise NotAvroError(
            f"record is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte "
            "single-object header (magic + fingerprint)"
        )
    return bytes(data[len(MAGIC) : HEADER_SIZE])


class SchemaRegistry:
    """Schemas known to this process, by fingerprint (writers) and by full name (readers).

    Every registered schema can be a writer; for each full name, one schema is *current*: it
    is what :meth:`encode` writes and what :meth:`decode` reads into by default.
    """

    def __init__(self, current: Iterable[RegisteredSchema] = ()) -> None:
        self._by_fingerprint: dict[bytes, RegisteredSchema] = {}
        self._current: dict[str, RegisteredSchema] = {}
        for schema in current:
            self.add(schema, current=True)

    @classmethod
    def from_directory(
        cls, schema_dir: Path = SCHEMA_DIR, history_dir: Path | None = HISTORY_DIR
    ) -> SchemaRegistry:
        """Load ``<schema_dir>/*.avsc`` as current schemas and ``<history_dir>/*.avsc`` as
        older writers. File names must match: ``herald.Event`` lives in ``Event.avsc`` and its
        history in ``Event.v<N>.avsc``.
        """
        registry = cls()
        for path in sorted(schema_dir.glob("*.avsc")):
            schema = RegisteredSchema.from_file(path)
            if path != avsc_path(schema_dir, schema.full_name):
                raise SerdeError(f"{path} defines {schema.full_name}; rename the file to match")
            registry.add(schema, current=True)
        if not registry._current:
            raise SerdeError(f"no Avro schemas (*.avsc) in {schema_dir}")
        history = sorted(history_dir.glob("*.avsc")) if history_dir is not None else []
        for path in history:
            schema = RegisteredSchema.from_file(path)
            stem = avsc_path(schema_dir, schema.full_name).stem
            if not path.name.startswith(stem + "."):
                raise SerdeError(f"{path} defines {schema.full_name}; name it {stem}.v<N>.avsc")
            registry.add(schema)
        return registry

    def add(self, schema: RegisteredSchema, *, current: bool = False) -> RegisteredSchema:
        """Register a parsed schema as a writer, and as its name's reader if ``current``.

        Registering the same schema again is harmless. A second *current* schema for a name
        already taken raises, unless it is the same schema.
        """
        known = self._by_fingerprint.get(schema.fingerprint)
        if known is not None and known.canonical_form != schema.canonical_form:
            # Two different schemas with one 64-bit fingerprint: astronomically unlikely, but
            # silently decoding with the wrong schema would be far worse than refusing.
            raise SerdeError(
                f"fingerprint {schema.fingerprint_hex} collides: {known.full_name} and "
                f"{schema.full_name} differ"
            )
        if current:
            existing = self._current.get(schema.full_name)
            if existing is not None and existing.fingerprint != schema.fingerprint:
                raise SerdeError(
                    f"two current schemas for {schema.full_name}: {existing.source} and "
                    f"{schema.source}; keep older versions in the history folder"
                )
            self._current[schema.full_name] = schema
        self._by_fingerprint.setdefault(schema.fingerprint, schema)
        return self._by_fingerprint[schema.fingerprint]

    def register(
        self, schema: Mapping[str, Any] | str | Path, *, current: bool = False
    ) -> RegisteredSchema:
        """Register an extra writer schema: a JSON object, JSON text, or an ``.avsc`` path."""
        if isinstance(schema, Path):
            parsed = RegisteredSchema.from_file(schema)
        elif isinstance(schema, str):
            try:
                loaded = json.loads(schema)
            except ValueError as exc:
                raise SerdeError(f"schema text is not JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise SerdeError("schema text must be a JSON object (a named Avro schema)")
            parsed = RegisteredSchema.from_json(loaded)
        else:
            parsed = RegisteredSchema.from_json(schema)
        return self.add(parsed, current=current)

    @property
    def names(self) -> tuple[str, ...]:
        """Full names that have a current schema, sorted."""
        return tuple(sorted(self._current))

    def __iter__(self) -> Iterator[RegisteredSchema]:
        """Every registered schema (current and older writers)."""
        return iter(list(self._by_fingerprint.values()))

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def current(self, full_name: str) -> RegisteredSchema:
        """The current schema of ``full_name`` (e.g. ``herald.Event``)."""
        try:
            return self._current[full_name]
        except KeyError:
            raise UnknownSchemaError(
                f"no current schema named {full_name!r}; known: {', '.join(self.names)}",
                full_name=full_name,
            ) from None

    def by_fingerprint(self, fingerprint: bytes) -> RegisteredSchema:
        """The schema with this 8-byte fingerprint (wire byte order)."""
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {fingerprint.hex()}: the record was "
                "written with a schema this process does not know (register it, or add it to "
                "schemas/avro/history)",
                fingerprint=fingerprint,
            ) from None

    def writer_of(self, data: bytes | bytearray | memoryview) -> RegisteredSchema:
        """The schema a record was written with, from its header, without decoding it."""
        return self.by_fingerprint(read_fingerprint(data))

    def encode(self, full_name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current schema ``full_name``: header + Avro body."""
        schema = self.current(full_name)
        buffer = BytesIO()
        buffer.write(schema.header)
        try:
            # strict_allow_default: a misspelt or stray field raises instead of vanishing,
            # while fields with a default may still be left out.
            schemaless_writer(buffer, schema.parsed, record, strict_allow_default=True)
        except Exception as exc:
            raise EncodeError(_describe_encode_error(full_name, record, exc)) from exc
        return buffer.getvalue()

    def decode(
        self, data: bytes | bytearray | memoryview, reader_name: str | None = None
    ) -> Record:
        """Decode a single-object encoded record.

        The writer schema comes from the header's fingerprint; the record is resolved against
        the current schema of ``reader_name`` (default: the writer's own full name), so
        fields the writer lacked get their defaults. Raises :class:`NotAvroError`,
        :class:`UnknownSchemaError`, :class:`IncompatibleSchemaError` or
        :class:`CorruptRecordError`, all :class:`SerdeError`.
        """
        writer = self.writer_of(data)
        if reader_name is None:
            # A registered writer with no current version of its name reads as itself.
            reader = self._current.get(writer.full_name, writer)
        else:
            reader = self.current(reader_name)
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(
                buffer, writer.parsed, None if reader is writer else reader.parsed
            )
        except SchemaResolutionError as exc:
            raise IncompatibleSchemaError(
                f"a {writer.full_name} record (fingerprint {writer.fingerprint_hex}) cannot be "
                f"read as {reader.full_name} (fingerprint {reader.fingerprint_hex})"
            ) from exc
        except Exception as exc:
            # fastavro raises EOFError, ValueError, IndexError, UnicodeDecodeError... on bad
            # bodies; callers need one type, and the original stays chained for debugging.
            detail = str(exc) or "unexpected end of data"
            raise CorruptRecordError(
                f"{writer.full_name} record body (fingerprint {writer.fingerprint_hex}) does "
                f"not decode: {type(exc).__name__}: {detail}"
            ) from exc
        if buffer.tell() != len(data):
            raise CorruptRecordError(
                f"{writer.full_name} record (fingerprint {writer.fingerprint_hex}) has "
                f"{len(data) - buffer.tell()} unexpected trailing bytes"
            )
        return cast(Record, record)


def _describe_encode_error(full_name: str, record: object, exc: Exception) -> str:
    if not isinstance(record, Mapping):
        return f"a {full_name} record must be a mapping, got {type(record).__name__}"
    # fastavro names the failing field ("must be string on field body on field templates");
    # keep its words, they are the most precise ones available without re-validating.
    return f"record does not match {full_name}: {exc}"


@lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    """The process-wide registry of the schemas shipped in ``schemas/avro`` (loaded once)."""
    return SchemaRegistry.from_directory()


def encode(full_name: str, record: Mapping[str, Any]) -> bytes:
    """Encode with the default registry; see :meth:`SchemaRegistry.encode`."""
    return default_registry().encode(full_name, record)


def decode(data: bytes | bytearray | memoryview, reader_name: str | None = None) -> Record:
    """Decode with the default registry; see :meth:`SchemaRegistry.decode`."""
    return default_registry().decode(data, reader_name)
