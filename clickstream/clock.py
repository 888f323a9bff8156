"""The wall clock in the milliseconds the messages and batch documents carry."""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
