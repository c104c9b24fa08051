"""Herald's PostgreSQL layer: models, engines and migrations.

- :mod:`herald.db.models`: the tables (SQLAlchemy 2 declarative models, one ``metadata``).
- :mod:`herald.db.engine`: ``make_engine``/``session_factory``; every
  connection's ``search_path`` is ``DatabaseSettings.database_schema``.
- :mod:`herald.db.migrate`: ``upgrade``/``downgrade``/``current`` run the Alembic migrations.
"""

from herald.db.engine import (
    make_engine,
    search_path_options,
    session_factory,
)
from herald.db.models import (
    CHANNELS,
    DELIVERY_STATUSES,
    UNREAD,
    Base,
    ChannelEndpoint,
    DeliveryAttempt,
    EventType,
    KnownDevice,
    Notification,
    NotificationDelivery,
    NotificationPreference,
    UserAccount,
    UserEventPreference,
    metadata,
)

__all__ = [
    "CHANNELS",
    "DELIVERY_STATUSES",
    "UNREAD",
    "Base",
    "ChannelEndpoint",
    "DeliveryAttempt",
    "EventType",
    "KnownDevice",
    "Notification",
    "NotificationDelivery",
    "NotificationPreference",
    "UserAccount",
    "UserEventPreference",
    "make_engine",
    "metadata",
    "search_path_options",
    "session_factory",
]
