"""The root of every error the pipeline raises on purpose."""


class ClickstreamError(Exception):
    """Root of the project's exceptions."""
