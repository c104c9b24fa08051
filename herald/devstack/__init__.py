"""The embedded local stack: real Apache Kafka (KRaft), PostgreSQL, an SMTP sink and an SMS
provider stand-in, run from this machine's own binaries under ``.local/`` on loopback ports.
"""
