"""The root of every error the pipeline raises on purpose.

Defined in ``schemas.exceptions`` (the bottom layer, which imports nothing of ours) and
re-exported here, so there is one root and no import runs back up.
"""

from schemas.exceptions import ClickstreamError

__all__ = ["ClickstreamError"]
