"""The read API: a user's inbox, a notification's delivery status, and a real-time stream.

A FastAPI application (:func:`services.inapp_store.api.app.create_app`) over the tables the
in-app store sink writes; ``python -m services.inapp_store.api`` serves it. One router per
resource:

- :mod:`~services.inapp_store.api.inbox`: ``/v1/users/{user_id}/notifications`` (the inbox,
  unread count, mark all read);
- :mod:`~services.inapp_store.api.notifications`: one notification, its per-channel delivery
  status and attempt history; mark read/unread, archive/unarchive;
- :mod:`~services.inapp_store.api.stream`: ``/v1/users/{user_id}/stream`` (Server-Sent Events,
  fed by PostgreSQL ``LISTEN``/``NOTIFY`` through :mod:`~services.inapp_store.api.broker`);
- :mod:`~services.inapp_store.api.tokens`: minting user tokens (admin);
- :mod:`~services.inapp_store.api.health`: ``/healthz``, ``/readyz``.

Security (admin keys, per-user tokens, rate limits, body size limit) is the shared
:mod:`herald.auth` and :mod:`herald.limits`. Kept free of imports so that the sink, which
shares the ``services.inapp_store`` package, never loads the web stack.
"""
