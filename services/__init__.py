"""Herald services: one package per deployable process."""
