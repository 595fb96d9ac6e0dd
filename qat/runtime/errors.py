"""Errors a user can act on when an export folder cannot be loaded or run."""


class FormatError(ValueError):
    """The export folder is not a valid qat export (missing file, unknown version, bad manifest)."""


class IntegrityError(FormatError):
    """A file of the export does not match its checksum: it was corrupted, truncated or edited."""
