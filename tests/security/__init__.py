"""Security tests (issue 13): each tries an attack from outside (HTTP, a plain Kafka producer,
a service started with a given environment) and asserts the refusal and that nothing else was
affected."""
