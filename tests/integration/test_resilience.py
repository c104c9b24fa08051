"""Services ride out transient faults on the real stack instead of exiting (issue 9, items 2, 3
and 6): a commit refused after the group evicted a sender, a PostgreSQL restart under a sender,
inapp_store and the read API, concurrent claims of one delivery, and a record PostgreSQL
refuses as data (not as a lost connection).

The PostgreSQL test restarts the SHARED local database (``pg_ctl stop -m immediate``, the
server's crash-like shutdown, then the stack's own start); the outage lasts a few seconds and
the server is started again in a ``finally`` block."""

from __future__ import annotations

import secrets
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from herald.auth import LOCAL_ADMIN_API_KEY
from herald.db import make_engine
from herald.devstack.components import Postgres
from herald.sender import PostgresJournal
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from tests.integration.delivery_util import dead_letters, delivery_request, publish, wait_for
from tests.integration.kafka_util import committed_to_end
from tests.integration.pipeline import free_port
from tests.integration.services import ServiceProcess, service_env
from tests.integration.test_failures import (
    SmsProvider,
    final_states,
    sms_requests,
    start_sender,
)
from tests.integration.test_inapp_store import count, input_topics
from tests.integration.test_inapp_store import start as start_store

pytestmark = pytest.mark.integration


@pytest.fixture
def sms(local_stack: Settings) -> Iterator[SmsProvider]:
    provider = SmsProvider(local_stack)
    yield provider
    provider.recover()


def group_state(kafka: KafkaSettings, group: str) -> ConsumerGroupState:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    description = admin.describe_consumer_groups([group])[group].result(10)
    return description.state


def topics_of_sms(topics: Catalogue) -> list[str]:
    """The SMS sender's input: the deliveries topic and its retry tiers."""
    spec = topics.deliveries_sms
    return [spec.name, *(tier.topic for tier in spec.retry_topics())]


def all_sent_once(kafka: KafkaSettings, topics: Catalogue, sms: SmsProvider, ids: set[str]) -> bool:
    states = final_states(kafka, topics)
    return all(states.get(i) == "sent" for i in ids) and sms.created() == dict.fromkeys(ids, 1)


def test_a_sender_evicted_mid_batch_survives_the_refused_commit_and_sends_each_once(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sms: SmsProvider,
) -> None:
    """SIGSTOP a sender in the middle of its only batch for longer than its session timeout:
    the group evicts it, so the batch's commit after SIGCONT is refused (UNKNOWN_MEMBER_ID /
    ILLEGAL_GENERATION / assignment lost). The sender must keep running, consume the records
    again and send none of them twice."""
    requests = sms_requests(sms, 600)
    ids = {r["delivery_id"] for r in requests}
    publish(kafka_settings, topics.deliveries_sms.name, requests)
    group = f"{kafka_settings.topic_prefix}sms_sender"
    # Paced (the sender's own rate limit) so the stop lands mid-batch however fast it is.
    sender = start_sender(run_service, "services.sms_sender", kafka_settings, db_settings,
                          SMS_SENDER_BATCH_SIZE="600",
                          SMS_SENDER_MAX_PER_SECOND="100")  # fmt: skip
    wait_for(lambda: sum(sms.created().values()) >= 30, 60, "the batch under way")
    sender.proc.send_signal(signal.SIGSTOP)
    try:
        assert sum(sms.created().values()) < 600, "the batch finished before the stop"
        # Session timeout 6 s (service_env): the coordinator evicts the silent member.
        wait_for(lambda: group_state(kafka_settings, group) == ConsumerGroupState.EMPTY,
                 60, "the group to evict the stopped sender", interval=0.5)  # fmt: skip
    finally:
        sender.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "commit refused" in sender.output(), 60, "the refused commit")
    wait_for(lambda: all_sent_once(kafka_settings, topics, sms, ids), 120, "all 600 sent")
    wait_for(lambda: committed_to_end(kafka_settings, group, topics_of_sms(topics)),
             60, "the sender's group to have no lag")  # fmt: skip
    assert sender.running(), "the sender exited on the refused commit"
    assert sms.created() == dict.fromkeys(ids, 1)  # the provider's own record: once each


def restart_postgres(settings: Settings, down_until: Callable[[], bool]) -> None:
    """Stop the shared PostgreSQL (every session cut), wait until ``down_until()`` (the
    services noticed), then start it again with the stack's own code.

    ``-m fast``, not ``immediate``: the local stack runs with ``synchronous_commit=off``, so a
    crash forgets the commits of its last ~0.6 s, and this test waits for inbox rows and then
    stops the server at once: now and then the crash took those rows with it (their offsets
    were committed), and the count never reached 300. The chaos suite crashes (SIGKILL) a
    PostgreSQL of its own that runs with ``synchronous_commit=on``."""
    postgres = Postgres(settings)
    assert postgres.managed, "the local stack's PostgreSQL is not ours to restart"
    pg_ctl = postgres._bin("pg_ctl")
    stop = [pg_ctl, "-D", str(postgres.data), "-m", "fast", "-w", "stop"]
    subprocess.run(postgres._as_owner(stop), check=True, capture_output=True, timeout=60)
    try:
        wait_for(down_until, 30, "the services to notice the outage", interval=0.1)
    finally:
        postgres.start()


def test_a_postgres_restart_stops_nothing(
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
    sms: SmsProvider,
) -> None:
    read_port = free_port()
    env = service_env(kafka_settings, db_settings, HERALD_READ_API_PORT=str(read_port))
    read_api = run_service("services.inapp_store.api", env)
    store = start_store(run_service, kafka_settings, db_settings)
    texts = sms_requests(sms, 400)
    ids = {r["delivery_id"] for r in texts}
    publish(kafka_settings, topics.deliveries_sms.name, texts)
    # Paced (the sender's own rate limit) so texts are still being sent when PostgreSQL stops.
    sender = start_sender(run_service, "services.sms_sender", kafka_settings, db_settings,
                          SMS_SENDER_BATCH_SIZE="50",
                          SMS_SENDER_MAX_PER_SECOND="50")  # fmt: skip
    user = f"r-{uuid.uuid4().hex[:8]}"
    inbox = [
        delivery_request("inapp", user, user_id=user, subject=f"n{i}", body_text="hello")
        for i in range(300)
    ]
    publish(kafka_settings, topics.deliveries_inapp.name, inbox[:100])
    wait_for(lambda: sum(sms.created().values()) >= 20, 60, "sends under way")
    wait_for(lambda: count(db_settings, "notification") >= 100, 60, "the first inbox rows")

    def noticed() -> bool:
        return "database unavailable" in sender.output()

    def publish_during_outage() -> bool:
        if not sender.running():
            return True  # it died: end the outage now, the assertions below fail
        if not noticed():
            return False
        publish(kafka_settings, topics.deliveries_inapp.name, inbox[100:])
        return True

    restart_postgres(local_stack, publish_during_outage)
    wait_for(lambda: "database unavailable" in store.output(), 30, "inapp_store to notice")
    wait_for(lambda: all_sent_once(kafka_settings, topics, sms, ids), 120, "all 400 texts sent")
    wait_for(lambda: count(db_settings, "notification") == 300, 60, "all 300 inbox rows")
    wait_for(lambda: committed_to_end(kafka_settings, kafka_settings.topic_prefix + "sms_sender",
             topics_of_sms(topics)), 60, "sms_sender lag 0")  # fmt: skip
    wait_for(lambda: committed_to_end(kafka_settings, kafka_settings.topic_prefix + "inapp_store",
             input_topics(topics)), 60, "inapp_store lag 0")  # fmt: skip
    assert sender.running() and store.running() and read_api.running()
    assert sms.created() == dict.fromkeys(ids, 1)
    headers = {"X-API-Key": LOCAL_ADMIN_API_KEY}
    with httpx.Client(base_url=f"http://127.0.0.1:{read_port}", headers=headers) as api:
        wait_for(lambda: api.get("/readyz").status_code == 200, 30, "the read API ready")
        page = api.get(f"/v1/users/{user}/notifications", params={"limit": 100})
        assert page.status_code == 200, page.text


def test_of_two_senders_claiming_one_delivery_only_one_wins(
    db_settings: DatabaseSettings,
) -> None:
    """Two sender instances read the journal (nothing there), then both claim: the second
    claim must lose, so only one of them sends. A stale unconfirmed claim is taken over by
    one of two takers only, and nobody releases a claim it does not hold."""
    engines = [make_engine(db_settings, pool_size=1) for _ in range(2)]
    first, second = (PostgresJournal(engine) for engine in engines)
    try:
        delivery = str(uuid.uuid4())
        assert first.states([delivery]) == {} and second.states([delivery]) == {}
        assert first.claim(delivery, "sms", 1, None) is True
        assert second.claim(delivery, "sms", 1, None) is False
        second.release(delivery)  # not its claim: must not drop the first's
        (entry,) = second.states([delivery]).values()
        assert entry.state == "sending"
        # Both find the claim unconfirmed (its sender died) and take it over: one wins.
        assert [first.claim(delivery, "sms", 2, entry), second.claim(delivery, "sms", 2, entry)
                ].count(True) == 1  # fmt: skip
        first.confirm(delivery, "SM1")
        assert second.claim(delivery, "sms", 3, second.states([delivery])[delivery]) is False
    finally:
        for journal in (first, second):
            journal.close()
        for engine in engines:
            engine.dispose()


def test_a_record_postgres_refuses_as_data_goes_to_the_dlq_and_the_stream_flows(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    """A user id too large for a btree index row (incompressible, > 2,704 bytes) makes
    PostgreSQL refuse the row with ProgramLimitExceeded, which psycopg classes with lost
    connections. It must go to the DLQ, and its neighbours to the inbox."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    before = delivery_request("inapp", user, user_id=user, subject="before", body_text="b")
    huge_user = "h" + secrets.token_hex(1600)
    bad = delivery_request("inapp", huge_user, user_id=huge_user, subject="bad", body_text="b")
    after = delivery_request("inapp", user, user_id=user, subject="after", body_text="a")
    publish(kafka_settings, topics.deliveries_inapp.name, [before, bad, after])
    store = start_store(run_service, kafka_settings, db_settings)

    parked: list[tuple[dict[str, Any], dict[str, str]]] = wait_for(
        lambda: dead_letters(kafka_settings, topics.deliveries_inapp.dlq_name), 60, "the DLQ"
    )
    wait_for(lambda: count(db_settings, "notification") == 2, 60, "both neighbours stored")
    assert [record["delivery_id"] for record, _ in parked] == [bad["delivery_id"]]
    print("error class:", parked[0][1].get("x-error-class"))
    wait_for(lambda: committed_to_end(kafka_settings, kafka_settings.topic_prefix + "inapp_store",
             input_topics(topics)), 60, "inapp_store lag 0")  # fmt: skip
    assert store.running()
