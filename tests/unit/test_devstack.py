"""Pure helpers of the local stack (no processes started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.devstack.components import new_cluster_id, valid_cluster_id


def test_new_cluster_ids_never_start_with_a_dash() -> None:
    # One uuid in 64 encodes to a leading '-'; kafka-storage would read it as an option.
    ids = {new_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(valid_cluster_id(value) for value in ids)
    assert not any(value.startswith("-") for value in ids)


@pytest.mark.parametrize(
    "value, valid",
    [
        ("MkU3OEVBNTcwNTJENDM2Qk", True),
        ("-kU3OEVBNTcwNTJENDM2Qk", False),
        ("short", False),
        ("", False),
    ],
)
def test_valid_cluster_id(value: str, valid: bool) -> None:
    assert valid_cluster_id(value) is valid


def test_a_stored_bad_cluster_id_is_replaced(tmp_path: Path) -> None:
    from herald.devstack.components import Kafka
    from herald.settings import get_settings

    kafka = Kafka(get_settings())
    kafka.dir = tmp_path
    (tmp_path / "cluster.id").write_text("-kU3OEVBNTcwNTJENDM2Qk")
    fresh = kafka._cluster_id()
    assert valid_cluster_id(fresh)
    assert (tmp_path / "cluster.id").read_text() == fresh
