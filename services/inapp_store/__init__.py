"""Herald service inapp_store: the PostgreSQL sink of the pipeline.

It consumes ``herald.notifications.v1`` (inbox rows), ``herald.deliveries.inapp.v1`` (an in-app
delivery is done once its inbox row exists) and ``herald.delivery-status.v1`` (every
delivery's latest state and attempt history), and writes each consumed batch to PostgreSQL in
one transaction, committed before the batch's Kafka offsets.

- :mod:`services.inapp_store.store`: row types, status precedence, in-batch dedupe, the SQL.
- :mod:`services.inapp_store.batch`: decoding and validating a batch into rows and records to
  produce (pure: no broker, no database).
- :mod:`services.inapp_store.service`: the Kafka/PostgreSQL adapter and ``main()``.
"""
