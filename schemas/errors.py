"""Exceptions that the command line reports as one line, without a traceback."""


class DcamError(Exception):
    """An error caused by the user's input (bad argument, missing or malformed file)."""


class SchemaVersionError(DcamError):
    """An artifact was written under a schema version this code cannot read."""

    def __init__(self, what: str, found: str, expected: str, path: str | None = None):
        where = f" at {path}" if path else ""
        super().__init__(
            f"{what}{where} was written with schema version {found}, "
            f"but this diffusion-cam reads version {expected} "
            f"(major versions must match); rerun the stage that wrote it"
        )
        self.found = found
        self.expected = expected
