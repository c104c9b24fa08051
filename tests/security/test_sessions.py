"""Session tokens, tried from outside on the real stack (issue 12): the read API started with
two session secrets (a rotation under way); a session opens its own user's data only, stops
at its expiry with a problem saying so, cannot renew itself, and a forged one counts as a
failed attempt. After each attack, the other user's inbox is unchanged and events still flow.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from herald.auth import LOCAL_ADMIN_API_KEY, session_token, verify_session_token
from herald.demo import System
from tests.security.test_access import AUTHOR, inbox, people, still_flowing, token

pytestmark = pytest.mark.integration

NEW_SECRET = "security-session-secret-new-0123456789"
OLD_SECRET = "security-session-secret-old-0123456789"
RETIRED_SECRET = "security-session-secret-gone-0123456789"
MINTER = "security-session-minter-key-0123456789"
EXPIRED = "urn:herald:problem:session-expired"


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return {
        "HERALD_ADMIN_API_KEYS": f"{LOCAL_ADMIN_API_KEY},{MINTER}=tokens:mint",
        "HERALD_SESSION_SECRETS": f"{NEW_SECRET},{OLD_SECRET}",
        "HERALD_SESSION_TTL_S": "600",
        "HERALD_AUTH_FAILURE_BURST": "5",
        "HERALD_AUTH_FAILURES_PER_MIN": "6",
    }


def anonymous(system: System) -> httpx.Client:
    assert system.read_api is not None
    return httpx.Client(base_url=str(system.read_api.base_url), timeout=15)


def session(system: System, user_id: str, ttl_s: int | None = None) -> str:
    with anonymous(system) as client:
        response = client.post(
            f"/v1/users/{user_id}/session",
            headers=token(user_id),
            json={"ttl_s": ttl_s} if ttl_s is not None else None,
        )
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == user_id
    minted: str = response.json()["token"]
    return minted


def test_a_session_opens_its_own_users_data_and_nothing_else(pipeline: System) -> None:
    alice, bob = people(pipeline)
    event_id = pipeline.publish("comment.created", [alice, bob], post_title="first", **AUTHOR)
    assert pipeline.poll(lambda: len(pipeline.inbox(event_id)) == 2)
    bobs = inbox(pipeline, bob)
    [bob_item] = pipeline.sql("select id from notification where user_id = %s", bob)
    alices = session(pipeline, alice)
    # Signed with the first secret of the rotation.
    assert verify_session_token(alices, [NEW_SECRET]).user_id == alice
    mine = {"X-User-Token": alices}
    with anonymous(pipeline) as client:
        assert client.get(f"/v1/users/{alice}/notifications", headers=mine).status_code == 200
        assert client.get(f"/v1/users/{alice}/preferences", headers=mine).status_code == 200
        attempts = [
            ("GET", f"/v1/users/{bob}/notifications", mine, None),
            ("GET", f"/v1/users/{bob}/notifications/unread-count", mine, None),
            ("GET", f"/v1/users/{bob}/notifications/{bob_item[0]}", mine, None),
            ("POST", f"/v1/users/{bob}/notifications/{bob_item[0]}/read", mine, None),
            ("POST", f"/v1/users/{bob}/notifications/read-all", mine, None),
            ("GET", f"/v1/users/{bob}/preferences", mine, None),
            ("PUT", f"/v1/users/{bob}/preferences", mine, {"email_enabled": False}),
            ("GET", f"/v1/users/{bob}/stream", {}, {"token": alices}),
            ("POST", f"/v1/users/{bob}/session", mine, None),
        ]
        for n, (method, path, headers, extra) in enumerate(attempts):
            query = extra if path.endswith("/stream") else None
            body = extra if method == "PUT" else None
            # Each counts as a failed attempt: speak from a fresh address every time.
            address = {"X-Forwarded-For": f"10.12.0.{n + 1}"}
            response = client.request(
                method, path, headers={**headers, **address}, params=query, json=body
            )
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["type"] == "urn:herald:problem:forbidden"
        # A session cannot mint another (a leaked one would never expire).
        renewed = client.post(f"/v1/users/{alice}/session", headers=mine)
        assert renewed.status_code == 403, renewed.text
    assert inbox(pipeline, bob) == bobs
    assert pipeline.api.get(f"/v1/users/{bob}/preferences").json()["email_enabled"] is True
    still_flowing(pipeline, alice, bob, bobs)


def test_both_secrets_verify_during_rotation_and_a_retired_one_does_not(
    pipeline: System,
) -> None:
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    with anonymous(pipeline) as client:
        for secret in (NEW_SECRET, OLD_SECRET):
            minted, _ = session_token(alice, secret, 60)
            response = client.get(
                f"/v1/users/{alice}/notifications", headers={"X-User-Token": minted}
            )
            assert response.status_code == 200, response.text
        retired, _ = session_token(alice, RETIRED_SECRET, 60)
        response = client.get(
            f"/v1/users/{alice}/notifications",
            headers={"X-User-Token": retired, "X-Forwarded-For": "10.12.1.1"},
        )
        assert response.status_code == 403, response.text
        # A forged session is a failed attempt: the address is stopped after the burst.
        statuses = [
            client.get(
                f"/v1/users/{alice}/stream",
                params={"token": retired},
                headers={"X-Forwarded-For": "10.12.1.2"},
            ).status_code
            for _ in range(7)
        ]
        assert statuses[:5] == [403] * 5 and statuses[-1] == 429, statuses
    still_flowing(pipeline, alice, bob, bobs)


def test_an_expired_session_is_refused_saying_so_and_ends_its_stream(pipeline: System) -> None:
    alice, bob = people(pipeline)
    bobs = inbox(pipeline, bob)
    with anonymous(pipeline) as client:
        # A stream opened with a 3-second session ends with a session.expired event.
        streaming = session(pipeline, alice, ttl_s=3)
        started = time.monotonic()
        events = []
        with client.stream(
            "GET", f"/v1/users/{alice}/stream", params={"token": streaming}, timeout=20
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
                if line.startswith("data:") and events and events[-1] == "session.expired":
                    assert "expired" in json.loads(line.split(":", 1)[1])["reason"]
        assert events[-1:] == ["session.expired"]
        assert time.monotonic() - started < 15

        short = session(pipeline, alice, ttl_s=1)
        time.sleep(2)
        for response in (
            client.get(f"/v1/users/{alice}/notifications", headers={"X-User-Token": short}),
            client.get(f"/v1/users/{alice}/stream", params={"token": short}),
            client.get(f"/v1/users/{alice}/preferences", headers={"X-User-Token": short}),
        ):
            assert response.status_code == 401, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == EXPIRED
            assert "expired" in response.json()["detail"]
        # Longer than allowed is refused, not shortened silently.
        too_long = client.post(
            f"/v1/users/{alice}/session", headers=token(alice), json={"ttl_s": 601}
        )
        assert too_long.status_code == 422, too_long.text
        # A backend with a tokens:mint key gets one for any user.
        minted = client.post(f"/v1/users/{bob}/session", headers={"X-API-Key": MINTER})
        assert minted.status_code == 201, minted.text
    still_flowing(pipeline, alice, bob, bobs)
