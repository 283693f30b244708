"""Short fine-tuning jobs started from the browser, one small module per concern: ``request``,
``policy``, ``store``, ``job``, ``runner`` (docs/architecture.md has the overview)."""
