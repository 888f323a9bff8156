"""What the release coordinator does on a clock, between polls of the releases topic:
ticks every partition, sends the markers of stalled releases again (heal), expires
released batches past their retention."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bson import ObjectId
from pymongo.errors import PyMongoError

from batches.expiry import BatchExpiry
from clickstream.clock import now_ms
from schemas import SchemaName

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from batches.store import BatchStore
    from clickstream.settings import Settings
    from schemas import AvroCodec, Topics
    from stream_app.control_auth import ControlAuth
    from stream_app.control_sender import ControlSender

# The coordinator's logger: the lines read as they did before the coordinator was split.
logger = logging.getLogger("stream_app.coordinator")

# How often, at most, stalled releases are looked for.
_HEAL_CHECK_SECONDS = 5.0
# How often batches past their retention are looked for, and how long each look may work.
_EXPIRY_CHECK_SECONDS = 5.0
_EXPIRY_BUDGET_SECONDS = 0.5


class ReleaseUpkeep:
    """Ticks, heals and expiry, each when its time has come.

    Args:
        settings: the tick interval, the heal bound, the batch retention, the partitions.
        names: topic names.
        store: the MongoDB batches.
        avro: the shared codec.
        control: signs the ticks.
        sender: sends the markers again and checks their delivery.
    """

    def __init__(
        self,
        settings: Settings,
        names: Topics,
        store: BatchStore,
        avro: AvroCodec,
        control: ControlAuth,
        sender: ControlSender,
    ) -> None:
        self._settings = settings
        self._names = names
        self._store = store
        self._avro = avro
        self._control = control
        self._sender = sender
        self._last_tick = 0.0
        self._last_heal_check = 0.0
        self._last_expiry_check = 0.0
        self._expiry = BatchExpiry(store)

    def maybe_expire(self) -> None:
        """Expire released batches past their retention, a bounded piece at a time."""
        days = self._settings.batch_retention_days
        now = time.monotonic()
        if days is None or now - self._last_expiry_check < _EXPIRY_CHECK_SECONDS:
            return
        self._last_expiry_check = now
        try:
            self._expiry.expire_due(now_ms() - int(days * 86_400_000), _EXPIRY_BUDGET_SECONDS)
        except PyMongoError as exc:
            logger.warning("batches not expired error=%s", exc)

    def maybe_heal(self, plain: Producer) -> None:
        """Send the markers of every stalled release again, to the partitions that have not
        reported their part."""
        bound = self._settings.release_heal_seconds
        now = time.monotonic()
        if now - self._last_heal_check < min(_HEAL_CHECK_SECONDS, bound / 2):
            return
        self._last_heal_check = now
        try:
            stalled = self._store.stalled_releases(now_ms() - int(bound * 1000))
        except PyMongoError as exc:
            logger.warning("stalled releases not looked for error=%s", exc)
            return
        for batch in stalled:
            waiting = batch.waiting_partitions
            if not waiting:  # every part reported: completed by the replay of the last report
                continue
            self._sender.forget_errors()
            self._sender.send_markers(plain, batch, waiting)
            # Not delivered: raises, and coordination starts again with new producers.
            self._sender.check_delivered(plain)
            try:
                self._store.mark_markers_sent(ObjectId(batch.batch_id), now_ms())
            except PyMongoError as exc:  # sent again at the next check: harmless
                logger.warning("release heal not recorded batch=%s error=%s", batch.batch_id, exc)
            logger.warning(
                "release healed: markers sent again batch=%s release=%s partitions=%s "
                "attempt=%s waited_s=%s",
                batch.batch_id,
                batch.release_id,
                ",".join(map(str, waiting)),
                batch.heal_count + 1,
                round((now_ms() - batch.markers_sent_at_ms) / 1000),
            )

    def maybe_tick(self, plain: Producer) -> None:
        now = time.monotonic()
        if now - self._last_tick < self._settings.tick_interval_seconds:
            return
        self._last_tick = now
        tick = self._avro.encode(SchemaName.PARTITION_TICK, {"sent_at_ms": now_ms()})
        signed = self._control.headers(self._names.sessions, tick)
        for partition in range(self._settings.topic_partitions):
            plain.produce(self._names.sessions, tick, partition=partition, headers=signed)
        plain.poll(0)
