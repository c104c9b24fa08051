"""Avro single-object encoding: round trips, wire header, Apache avro interop, evolution, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import avro.compatibility
import avro.io
import avro.schema
import pytest

from herald.serde import (
    HEADER_SIZE,
    MAGIC,
    CorruptRecordError,
    EncodeError,
    IncompatibleSchemaError,
    NotAvroError,
    RegisteredSchema,
    SchemaRegistry,
    SerdeError,
    UnknownSchemaError,
    decode,
    default_registry,
    encode,
    read_fingerprint,
)
from schemas import HISTORY_DIR, SCHEMA_DIR
from tests.samples import EVENT, SAMPLES, WHEN

# CRC-64-AVRO, written out from the specification so the test does not trust either library.
_EMPTY_FINGERPRINT = 0xC15D213AA4D7A795


def _fingerprint_table() -> list[int]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY_FINGERPRINT & -(fp & 1))
        table.append(fp)
    return table


_FINGERPRINT_TABLE = _fingerprint_table()


def crc64_avro(data: bytes) -> bytes:
    """The spec's 64-bit Rabin fingerprint, little-endian as on the wire."""
    fp = _EMPTY_FINGERPRINT
    for byte in data:
        fp = (fp >> 8) ^ _FINGERPRINT_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _primitives_as_names(node: Any) -> Any:
    """Apply the spec's [PRIMITIVES] rule: ``{"type": "long"}`` becomes ``"long"``.

    Apache avro's Python canonical form leaves a logical-type primitive as ``{"type":"long"}``
    once ``logicalType`` is stripped; Java's SchemaNormalization and fastavro write ``"long"``.
    """
    if isinstance(node, dict):
        if set(node) == {"type"} and isinstance(node["type"], str):
            return node["type"]
        return {key: _primitives_as_names(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_primitives_as_names(item) for item in node]
    return node


def _apache_schema(schema: RegisteredSchema) -> avro.schema.Schema:
    assert schema.source is not None
    return avro.schema.parse(schema.source.read_text(encoding="utf-8"))


def _history(full_name: str) -> list[RegisteredSchema]:
    registry = default_registry()
    current = registry.current(full_name)
    return [s for s in registry if s.full_name == full_name and s is not current]


CURRENT = sorted(SAMPLES)


def test_samples_cover_every_current_schema() -> None:
    assert sorted(default_registry().names) == CURRENT


@pytest.mark.parametrize("full_name", CURRENT)
def test_round_trip(full_name: str) -> None:
    record = SAMPLES[full_name]
    assert decode(encode(full_name, record)) == record


@pytest.mark.parametrize("full_name", CURRENT)
def test_header_is_magic_and_crc64_fingerprint_of_canonical_form(full_name: str) -> None:
    schema = default_registry().current(full_name)
    data = encode(full_name, SAMPLES[full_name])

    assert data[:2] == b"\xc3\x01" == MAGIC
    assert data[2:HEADER_SIZE] == schema.fingerprint == crc64_avro(schema.canonical_form.encode())
    assert read_fingerprint(data) == schema.fingerprint


@pytest.mark.parametrize("full_name", CURRENT)
def test_apache_avro_agrees_on_canonical_form(full_name: str) -> None:
    ours = default_registry().current(full_name)
    apache = _apache_schema(ours)
    canonical = json.dumps(
        _primitives_as_names(json.loads(apache.canonical_form)), separators=(",", ":")
    )
    assert canonical == ours.canonical_form
    assert crc64_avro(canonical.encode()) == ours.fingerprint


def test_apache_avro_fingerprint_matches_when_no_logical_types() -> None:
    # Proves the byte order and algorithm agree with Apache's own fingerprint() where its
    # canonical form is right (see _primitives_as_names for where it is not).
    text = json.dumps(
        {
            "type": "record",
            "name": "Plain",
            "namespace": "herald.test",
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["a", "b"]}},
            ],
        }
    )
    ours = SchemaRegistry().register(text)
    assert ours.fingerprint == avro.schema.parse(text).fingerprint("CRC-64-AVRO")


@pytest.mark.xfail(
    strict=True,
    reason="avro 1.12 (Python) keeps {'type': 'long'} for logical types in the canonical "
    "form, against the spec's [PRIMITIVES] rule; Java and fastavro write 'long'",
)
def test_apache_avro_fingerprint_matches_with_logical_types() -> None:
    ours = default_registry().current("herald.Event")
    assert _apache_schema(ours).fingerprint("CRC-64-AVRO") == ours.fingerprint


@pytest.mark.parametrize("full_name", CURRENT)
def test_apache_avro_reads_what_we_write(full_name: str) -> None:
    schema = default_registry().current(full_name)
    data = encode(full_name, SAMPLES[full_name])

    decoder = avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:]))
    record = avro.io.DatumReader(_apache_schema(schema)).read(decoder)

    assert record == SAMPLES[full_name]


def test_old_writer_is_read_with_new_fields_defaulted() -> None:
    (v0,) = _history("herald.Event")
    assert v0.source is not None and v0.source.name == "Event.v0.avsc"
    old_record = {key: EVENT[key] for key in EVENT if key not in {"producer", "metadata"}}
    data = SchemaRegistry([v0]).encode("herald.Event", old_record)

    assert data[2:HEADER_SIZE] == v0.fingerprint
    assert v0.fingerprint != default_registry().current("herald.Event").fingerprint
    assert decode(data) == {**old_record, "producer": "unknown", "metadata": {}}
    assert decode(data, "herald.Event") == decode(data)


@pytest.mark.parametrize("full_name", sorted({s.full_name for s in default_registry()}))
def test_every_history_version_is_readable_by_the_current_schema(full_name: str) -> None:
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()
    reader = _apache_schema(default_registry().current(full_name))
    for writer in _history(full_name):
        result = checker.get_compatibility(reader, _apache_schema(writer))
        assert result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible, (
            writer.source,
            result.messages,
        )


def test_registered_newer_writer_is_read_by_the_current_reader() -> None:
    current = default_registry().current("herald.Event")
    newer = json.loads(json.dumps(current.schema))
    newer["fields"].append({"name": "priority", "type": "int", "default": 0})
    data = SchemaRegistry([RegisteredSchema.from_json(newer)]).encode(
        "herald.Event", {**EVENT, "priority": 5}
    )
    registry = SchemaRegistry.from_directory()

    with pytest.raises(UnknownSchemaError):
        registry.decode(data)
    registry.register(newer)
    # The writer is registered but not current: the current reader drops the new field.
    assert registry.decode(data) == EVENT
    assert registry.current("herald.Event") is not registry.writer_of(data)


def test_unknown_fingerprint() -> None:
    data = MAGIC + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(UnknownSchemaError, match="0123456789abcdef") as caught:
        decode(data)
    assert caught.value.fingerprint == bytes.fromhex("0123456789abcdef")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc3", id="one-byte"),
        pytest.param(MAGIC + b"\x01\x02", id="short-header"),
        pytest.param(b"\x00\x00\x00\x00\x07\x02a", id="confluent-framing"),
        pytest.param(b'{"event_id": "x"}', id="json"),
        pytest.param(bytes(range(3, 40)), id="random"),
    ],
)
def test_not_avro(data: bytes) -> None:
    with pytest.raises(NotAvroError):
        decode(data)


def test_truncated_body() -> None:
    data = encode("herald.Event", EVENT)
    for cut in (HEADER_SIZE + 1, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptRecordError, match=r"herald\.Event"):
            decode(data[:cut])


def test_trailing_bytes() -> None:
    with pytest.raises(CorruptRecordError, match="trailing"):
        decode(encode("herald.Event", EVENT) + b"\x00")


def test_garbage_body_with_a_known_header() -> None:
    header = default_registry().current("herald.Event").header
    # 0x31 is the zig-zag varint -25: a negative string length for event_id.
    garbage = bytes.fromhex("31ffffffffffffffff7f") + bytes(20)
    with pytest.raises(CorruptRecordError) as caught:
        decode(header + garbage)
    assert caught.value.__cause__ is not None


def test_reading_as_another_record_is_incompatible() -> None:
    with pytest.raises(IncompatibleSchemaError, match=r"herald\.Event.*herald\.User"):
        decode(encode("herald.Event", EVENT), "herald.User")


def test_decode_accepts_any_bytes_like() -> None:
    data = encode("herald.Event", EVENT)
    assert decode(bytearray(data)) == decode(memoryview(data)) == EVENT


@pytest.mark.parametrize(
    ("record", "field"),
    [
        pytest.param({**EVENT, "occurred_at": "yesterday"}, "occurred_at", id="wrong-type"),
        pytest.param({k: v for k, v in EVENT.items() if k != "event_id"}, "event_id", id="missing"),
        pytest.param({**EVENT, "recipient": ["user-1"]}, "recipient", id="misspelt"),
        pytest.param({**EVENT, "actor_id": 17}, "actor_id", id="bad-union"),
    ],
)
def test_bad_record_names_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError, match=field):
        encode("herald.Event", record)


def test_non_mapping_record() -> None:
    with pytest.raises(EncodeError, match="mapping"):
        encode("herald.Event", "not a record")  # type: ignore[arg-type]


def test_defaults_fill_omitted_fields() -> None:
    minimal = {"code": "x.y", "updated_at": WHEN}
    decoded = decode(encode("herald.EventType", minimal))
    assert decoded["channels"] == ["inapp", "email"]
    assert decoded["templates"] == {} and decoded["is_active"] is True


def test_encode_unknown_schema_name() -> None:
    with pytest.raises(UnknownSchemaError, match=r"herald\.Nope"):
        encode("herald.Nope", {})


def test_every_error_is_a_serde_error() -> None:
    for error in (NotAvroError, UnknownSchemaError, CorruptRecordError, EncodeError):
        assert issubclass(error, SerdeError)
    assert issubclass(IncompatibleSchemaError, SerdeError)


def test_default_registry_is_loaded_once() -> None:
    assert default_registry() is default_registry()


def test_registry_refuses_misnamed_schema_files(tmp_path: Path) -> None:
    (tmp_path / "Wrong.avsc").write_text((SCHEMA_DIR / "User.avsc").read_text())
    with pytest.raises(SerdeError, match="rename"):
        SchemaRegistry.from_directory(tmp_path, history_dir=None)


def test_registry_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SerdeError, match="no Avro schemas"):
        SchemaRegistry.from_directory(tmp_path, history_dir=None)


def test_registry_refuses_two_current_versions() -> None:
    registry = SchemaRegistry.from_directory()
    with pytest.raises(SerdeError, match="two current schemas"):
        registry.register(HISTORY_DIR / "Event.v0.avsc", current=True)


def test_invalid_schema_text() -> None:
    with pytest.raises(SerdeError):
        SchemaRegistry().register('{"type": "record", "name": "X", "fields": [{"name": 1}]}')
