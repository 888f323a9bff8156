"""Released batches: the MongoDB store (``batches.store``) the stream app writes and the gateway
and consumers read, and the API shape of a stored session (``batches.public``)."""
