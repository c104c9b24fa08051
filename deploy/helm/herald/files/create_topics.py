"""The Helm hook's topic step: ``herald topics create`` with the cluster's replication.

The catalogue (``schemas/topics.toml``) decides names, partitions, retention, retry tiers and
DLQs; its replication factor is the local stack's (1). Here every topic, and the router's table
changelogs (which the router would otherwise create itself with the catalogue's factor), is
created with ``HERALD_TOPIC_REPLICATION_FACTOR`` replicas and ``min.insync.replicas`` set to
``HERALD_TOPIC_MIN_INSYNC_REPLICAS``. Topics that exist are left as they are (like ``herald
topics create``): changing a live topic's replication is a partition reassignment.

Run by the chart's hook Job (mounted at /herald-hook, run with runpy from the image's working
directory).
"""

from __future__ import annotations

import os
import sys

from herald.settings import get_settings
from herald.topics import create_declared_topics
from schemas import CATALOGUE, TopicDeclaration
from services.router.app import create_router


def main() -> int:
    settings = get_settings()
    replication = int(os.environ["HERALD_TOPIC_REPLICATION_FACTOR"])
    min_insync = os.environ.get("HERALD_TOPIC_MIN_INSYNC_REPLICAS", "").strip()
    extra = {"min.insync.replicas": min_insync} if min_insync else {}
    prefix = settings.kafka.topic_prefix
    # create_router builds the Faust app only to name its changelogs; nothing connects.
    declared = CATALOGUE.all_topics(prefix) + create_router(settings).changelog_topics()
    wanted = [
        TopicDeclaration(name, partitions, replication, {**configs, **extra})
        for name, partitions, _, configs in declared
    ]
    results = create_declared_topics(settings.kafka, wanted, timeout=60.0)
    for result in results:
        print(f"{result.outcome:<13} {result.name}", flush=True)
    created = sum(r.outcome == "created" for r in results)
    print(
        f"{created} created, {len(results) - created} unchanged "
        f"(replication factor {replication}, min.insync.replicas {min_insync or 'broker default'})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
