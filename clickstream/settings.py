"""The one settings object, read from the environment with the prefix ``CLICKSTREAM_``."""

from __future__ import annotations

import json
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the pipeline. Each field is fed by ``CLICKSTREAM_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CLICKSTREAM_", frozen=True, extra="ignore")

    # HTTP gateway
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=5000, ge=0, le=65535)
    # Processes serving the API, sharing the port.
    http_workers: int = Field(default=1, ge=1)
    http_access_log: bool = False
    # On SIGTERM the gateway answers /ready 503 and keeps serving this long, so that load
    # balancers stop sending before it stops listening. With the in-flight wait it shares
    # 5 s (at most 4 here keeps the whole stop within 10 s). 0: no delay.
    drain_seconds: float = Field(default=2.0, ge=0, le=30)

    # Where the local servers keep data, pids and logs, so a restart keeps what was accepted.
    data_dir: Path = Path(".clickstream")
    # `clickstream run` starts its worker this much nicer than the gateway: on one machine
    # the answers a client waits for go first and the worker catches up behind them (the
    # bench's p99 with 100-event requests at 4 connections: 210 ms at 0, 70 ms at 10).
    local_worker_nice: int = Field(default=10, ge=0, le=19)

    # External servers. When set, they are used and no local server is started.
    kafka_bootstrap: str | None = None
    mongodb_uri: SecretStr | None = None
    # Ports of the local servers; a free port is chosen at start when unset.
    kafka_port: int | None = Field(default=None, ge=1, le=65535)
    mongodb_port: int | None = Field(default=None, ge=1, le=65535)
    mongodb_database: str = "clickstream"
    # How long a MongoDB operation waits for a usable server before it fails.
    mongodb_server_selection_timeout_seconds: float = Field(default=10.0, gt=0)

    # Topics
    topic_prefix: str = "clickstream."
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)

    # Input limits: requests beyond them are refused with a 4xx and publish nothing.
    max_id_length: int = Field(default=128, ge=1)
    max_events_per_request: int = Field(default=1000, ge=1)
    # A request must fit in one Kafka message (1 MB by default), and so in one table value.
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    created_at_max_age_seconds: int = Field(default=12 * 3600, ge=0)
    created_at_max_ahead_seconds: int = Field(default=5 * 60, ge=0)

    # Durability: how long a request waits for Kafka's acknowledgement before a 503.
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    retry_after_seconds: int = Field(default=2, ge=1)
    kafka_linger_ms: float = Field(default=1.0, ge=0)
    # Extra librdkafka settings for production (security, tuning), as a JSON object.
    # Values are secret: they hold SASL passwords and key passwords.
    kafka_extra_config: dict[str, SecretStr] = Field(default_factory=dict)

    # Stream worker
    # Where a worker keeps its partitions' state: on disk (RocksDB, under the data dir:
    # memory bounded by the cache settings below, a restart reads only the changelog's
    # tail) or in memory (rebuilt from the changelog at every start).
    worker_store: Literal["memory", "rocksdb"] = "rocksdb"
    # RocksDB's memory: one block cache and two write buffers of this size, shared by all
    # the partitions of a worker.
    worker_rocksdb_block_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    worker_rocksdb_write_buffer_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    worker_rocksdb_max_open_files: int = Field(default=256, ge=16)
    # At most this many messages are handled (and committed) together.
    worker_batch_max_messages: int = Field(default=5000, ge=1)
    # Loopback by default: only the gateway needs the worker's web server.
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = Field(default=6066, ge=1, le=65535)
    # The worker's static identity in its consumer groups: a worker restarted with the
    # same id takes its partitions back at once. Unique per running worker; default
    # <hostname>-<web port>.
    worker_id: str | None = None
    # Where the gateway reads sessions from: any worker routes to the partition's owner.
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:6066"]
    )
    worker_request_timeout_seconds: float = Field(default=5.0, gt=0)
    # The gateway's /ready also asks the workers' /ready/ (one must answer 200): on for
    # `clickstream run`, where the gateway is useless without its one worker.
    ready_requires_worker: bool = False
    # A worker that dies keeps its partitions this long, until the group notices. Some
    # brokers (the local one) wait for the rebalance timeout instead: keep it short too.
    worker_session_timeout_seconds: float = Field(default=10.0, ge=6)
    worker_rebalance_timeout_seconds: float = Field(default=20.0, ge=6)
    # An idle worker pauses its partitions and looks at their end offsets this often, for
    # brokers that answer an empty fetch at once instead of holding it (the local one): a
    # consumer would fetch without pause. 0: never pause (Apache Kafka holds the fetch).
    worker_idle_poll_seconds: float = Field(default=0.05, ge=0)
    # Events of a session never registered go to the dead-letter topic after this wait.
    orphan_event_wait_seconds: float = Field(default=3600.0, gt=0)
    # How often the release coordinator ticks every partition (expiry needs no traffic).
    tick_interval_seconds: float = Field(default=30.0, gt=0)
    # Completed releases each partition remembers (to report its part again if asked).
    release_history: int = Field(default=20, ge=2)
    # A session released with everything it has leaves the worker's tables once quiet this
    # long (its released copy stays in MongoDB; later events bring it back).
    session_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # How long the worker retries a message it fails to handle (MongoDB or Kafka away)
    # before it stops, unacknowledged, to handle it again after a restart.
    worker_retry_seconds: float = Field(default=120.0, gt=0)
    # The segment size of the tables' changelog topics (compacted). Compaction only cleans
    # closed segments, so this bounds what a restarted worker reads beyond the live state
    # (Kafka's default of 1 GiB would have it read every change ever made).
    changelog_segment_bytes: int = Field(default=4 * 1024 * 1024, ge=1024 * 1024)

    # Security (see the README's Security section). Comma-separated lists, so a new value
    # can be added before the old one is removed.
    # Bearer tokens of the internal endpoints; none configured refuses every call.
    internal_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Keys of the ingest endpoints (X-Clickstream-Key); none configured leaves them open.
    ingest_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Signs the pipeline's control messages: the first one signs, every one verifies.
    control_secret: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # A release marker this far ahead of the worker's clock is refused.
    control_max_clock_skew_seconds: float = Field(default=3600.0, gt=0)
    # Browser origins allowed to call the public endpoints (CORS); none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Releases
    release_wait_seconds: float = Field(default=30.0, gt=0)
    # A batch still releasing this long after its markers were sent gets them again, on
    # the partitions that have not reported their part.
    release_heal_seconds: float = Field(default=60.0, gt=0)

    @field_validator(
        "worker_urls",
        "internal_tokens",
        "ingest_keys",
        "control_secret",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _split_urls(cls, value: object) -> object:
        """Accept a comma-separated list as well as JSON."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    def kafka_common_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """librdkafka settings shared by every client of the pipeline."""
        servers = bootstrap or self.kafka_bootstrap
        if not servers:
            raise ValueError("no Kafka bootstrap servers: set CLICKSTREAM_KAFKA_BOOTSTRAP")
        return {"bootstrap.servers": servers, **self.kafka_extra}

    @property
    def kafka_extra(self) -> dict[str, str]:
        """``CLICKSTREAM_KAFKA_EXTRA_CONFIG`` in clear, for the Kafka clients only."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra_config.items()}

    def kafka_producer_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """librdkafka settings of the producer behind every 2xx: nothing acknowledged is lost."""
        timeout_ms = int(self.publish_timeout_seconds * 1000)
        return {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.kafka_linger_ms,
            "compression.type": "lz4",
            # Kafka's own limit (librdkafka's default is 1,000,000): a request at the body
            # limit, once in Avro with its key and headers, still fits in one message.
            "message.max.bytes": 1_048_576,
            # Java's partitioner, so a session lands where Java and faust clients put it.
            "partitioner": "murmur2_random",
            # Past this a message is failed back to us, so a request never hangs.
            "message.timeout.ms": timeout_ms,
            "socket.connection.setup.timeout.ms": max(timeout_ms, 1000),
            **self.kafka_common_config(bootstrap),
        }

    def environment(self) -> dict[str, str]:
        """These settings as ``CLICKSTREAM_*`` variables, for a process started from here."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
                text = ",".join(item.get_secret_value() for item in value)
            elif isinstance(value, list | dict):
                text = json.dumps(value, default=_reveal)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"CLICKSTREAM_{name.upper()}"] = text
        return env

    @property
    def worker_instance_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{self.worker_web_port}"

    @property
    def control_secrets(self) -> list[bytes]:
        return [secret.get_secret_value().encode() for secret in self.control_secret]

    @property
    def mongodb_url(self) -> str | None:
        return self.mongodb_uri.get_secret_value() if self.mongodb_uri else None


def _reveal(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"cannot write {type(value).__name__} to the environment")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
