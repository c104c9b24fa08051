"""Issue 13, item 5: templates are compiled and limited, from outside.

Every service runs as a real process. Over HTTP, an event type whose template does not
compile, reaches outside its context (``''.__class__``, ``cycler.__init__.__globals__``,
``|attr('__class__')``), is a constant bomb (``'x' * 10**9``, nested ``range(100000)``) or is
nested past what Python can compile (it was a 500) is refused with 422 when it is saved, and
an event type already stored keeps its template. A template that compiles but blows up with
the event's own values (``'x' * (n|int)``, nested ``range(n|int)``, ``|attr(name)``) parks
that event on the events DLQ with its reason (``template.limit``, ``template.error``).
Afterwards an ordinary event is delivered, and another user's inbox is what it was.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from confluent_kafka import Message

from herald.serde import decode
from herald.streaming import H_ERROR_CLASS, H_ERROR_MESSAGE, headers_dict
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration

NOTE = "sec.note"
NESTED_RANGE = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
#: Templates refused when saved: (body, what the 422 says).
REFUSED_AT_SAVE = (
    ("{{ n", "unexpected end of template"),
    ("{{ ''.__class__.__mro__ }}", "'__class__': names starting with '_' are not allowed"),
    ("{{ cycler.__init__.__globals__ }}", "'__init__': names starting with '_' are not allowed"),
    ("{{ n|attr('__class__') }}", "'__class__': names starting with '_' are not allowed"),
    ("{{ 'x' * 10**9 }}", "a repeated value would be 1000000000 long"),
    (NESTED_RANGE, "range() of 100000 numbers; the limit is 10000"),
    # Past Python's 20 nested blocks in the code Jinja generates (it was a 500).
    ("{% for a in n %}" * 30 + "{% endfor %}" * 30, "nested too deeply to compile"),
)
#: Templates that compile; the events' values make them go past a limit when rendered:
#: code -> (body, the event's context, error class, what the dead letter says).
BLOWN_AT_RENDER: dict[str, tuple[str, dict[str, str], str, str]] = {
    "sec.repeat": (
        "{{ 'x' * (n|int) }}",
        {"n": "1000000000"},
        "template.limit",
        "a repeated value would be 1000000000 long",
    ),
    "sec.loops": (
        "{% for a in range(n|int) %}{% for b in range(n|int) %}x{% endfor %}{% endfor %}",
        {"n": "5000"},
        "template.limit",
        "loops ran more than 10000 iterations",
    ),
    "sec.peek": (
        "{{ n|attr(name) }}",
        {"n": "1", "name": "__class__"},
        "template.error",
        "access to attribute '__class__' of 'str' object is unsafe",
    ),
}


def event_type(body: str) -> dict[str, Any]:
    return {
        "name": "Security note",
        "channels": ["inapp"],
        "templates": {"inapp": {"title": "Note {{ n }}", "body": body}},
    }


def titles(pipeline: Pipeline, user: str) -> list[str]:
    """The titles in ``user``'s inbox, read through the read API, newest first."""
    assert pipeline.read_api is not None
    response = pipeline.read_api.get(f"/v1/users/{user}/notifications")
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


def send(pipeline: Pipeline, code: str, user: str, context: dict[str, str]) -> str:
    """``POST /v1/events``: one event; its id."""
    body = {"event_type": code, "recipients": [user], "context": context}
    response = pipeline.api.post("/v1/events", json=body)
    assert response.status_code == 202, response.text
    [event_id] = response.json()["event_ids"]
    return str(event_id)


def parked_event_id(message: Message) -> str:
    """The id of the event a dead letter of the events DLQ holds: the event itself, or the
    recipient's copy of it (a render fails in stage 2, on that copy)."""
    record = decode(message.value() or b"")
    return str(record.get("event", record)["event_id"])


def assert_422(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert reason in problem["detail"], problem
    assert any(error["field"].startswith("templates.inapp.body") for error in problem["errors"])


def test_templates_are_compiled_when_saved_and_limited_when_rendered(pipeline: Pipeline) -> None:
    api = pipeline.api
    created = api.post("/v1/event-types", json={"code": NOTE, **event_type("Hi")})
    assert created.status_code == 201, created.text
    alice, bob = pipeline.user("alice"), pipeline.user("bob")
    send(pipeline, NOTE, bob, {"n": "before"})
    wait_for(lambda: titles(pipeline, bob) == ["Note before"], 90, "bob's first note")

    # Refused when saved: a new event type is not created, a stored one keeps its template.
    for body, reason in REFUSED_AT_SAVE:
        assert_422(
            api.post("/v1/event-types", json={"code": "sec.bad", **event_type(body)}), reason
        )
        assert api.get("/v1/event-types/sec.bad").status_code == 404
        assert_422(api.put(f"/v1/event-types/{NOTE}", json=event_type(body)), reason)
    stored = api.get(f"/v1/event-types/{NOTE}").json()
    assert stored["templates"]["inapp"]["body"] == "Hi"

    # Compiles, but the event's values make the render go past a limit: the DLQ, with why.
    parked = {}
    for code, (body, context, _, _) in BLOWN_AT_RENDER.items():
        response = api.post("/v1/event-types", json={"code": code, **event_type(body)})
        assert response.status_code == 201, response.text
        parked[send(pipeline, code, alice, context)] = code
    dlq = pipeline.catalogue.events.dlq_name

    def dead_letters() -> dict[str, dict[str, str]] | None:
        letters = {parked_event_id(m): headers_dict(m) for m in read_all(pipeline.kafka, dlq)}
        return letters if set(parked) <= set(letters) else None

    letters = wait_for(dead_letters, 90, "the blown templates' events on the events DLQ")
    assert set(letters) == set(parked), letters
    for event_id, code in parked.items():
        _, _, error_class, reason = BLOWN_AT_RENDER[code]
        assert letters[event_id][H_ERROR_CLASS] == error_class, letters[event_id]
        assert reason in letters[event_id][H_ERROR_MESSAGE], letters[event_id]

    # The router still flows: an ordinary event after the bombs is delivered; they made
    # nothing for alice, and bob's inbox did not change.
    send(pipeline, NOTE, alice, {"n": "after"})
    wait_for(lambda: titles(pipeline, alice) == ["Note after"], 90, "alice's note after the bombs")
    assert titles(pipeline, bob) == ["Note before"]
