"""Errors raised by the exporter: each says what was found and what to change."""


class ExportError(ValueError):
    """The model (or checkpoint) cannot be exported as it is."""
