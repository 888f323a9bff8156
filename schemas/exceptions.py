"""The project's root exception, and the errors of encoding and decoding messages.

The root lives here, in the lowest layer, so the contract depends on nothing of ours;
``clickstream.exceptions`` re-exports it for the packages above.
"""


class ClickstreamError(Exception):
    """Root of the project's exceptions."""


class SchemaError(ClickstreamError):
    """Root of the message contract's errors."""


class SchemaSetupError(SchemaError, ValueError):
    """The schema files or their ids are inconsistent; raised at start-up."""


class MalformedMessageError(SchemaError, ValueError):
    """Bytes that are not a message of the contract (bad framing or bad Avro)."""


class UnknownSchemaError(MalformedMessageError):
    """A message written with a schema id this codec does not know."""


class RecordMismatchError(SchemaError, ValueError):
    """A record that does not fit the schema it is encoded with."""
