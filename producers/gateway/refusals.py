"""The refusals every write route documents in the OpenAPI answer list."""

REFUSALS: dict[int | str, dict[str, str]] = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body over the size limit"},
    422: {"description": "A field is missing, of the wrong type or out of bounds"},
    503: {"description": "Kafka did not acknowledge in time; retry after Retry-After seconds"},
}
