"""The one settings object, read from the environment with the prefix ``CLICKSTREAM_``."""

from __future__ import annotations

import json
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WORKER_PORT = 6066

# The input limits' defaults, here once: the settings below default to them, and the request
# models (producers/models.py) are declared with them before any settings are passed in.
DEFAULT_MAX_ID_LENGTH = 128
DEFAULT_MAX_EVENTS_PER_REQUEST = 1000
DEFAULT_CREATED_AT_MAX_AGE_SECONDS = 12 * 3600
DEFAULT_CREATED_AT_MAX_AHEAD_SECONDS = 5 * 60


# What deploy files and docs put where a secret goes.
KafkaConfig = dict[str, str | int | float | bool]
"""librdkafka settings, by their dotted names."""

_PLACEHOLDER = re.compile(r"replace[-_ ]?(with|me)|change[-_ ]?me|<[^>]*>", re.IGNORECASE)


class Settings(BaseSettings):
    """Every knob of the pipeline. Each field is fed by ``CLICKSTREAM_<FIELD NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="CLICKSTREAM_",
        frozen=True,
        extra="ignore",
        # The docstring under each field is its description: the README's table of settings
        # is made from them (python -m clickstream.settings_table).
        use_attribute_docstrings=True,
    )

    # -- the HTTP gateway

    http_host: str = "127.0.0.1"
    """Where the API listens."""
    http_port: int = Field(default=5000, ge=0, le=65535)
    """The API's port."""
    http_workers: int = Field(default=1, ge=1)
    """Gateway processes sharing the port (more than one: no drain delay, see Deploy)."""
    http_access_log: bool = False
    """uvicorn's line per request."""
    drain_seconds: float = Field(default=2.0, ge=0, le=30)
    """On SIGTERM the gateway's ``/ready`` answers 503 and it keeps serving this long, so load
    balancers stop sending before it stops listening (at most 4 keeps the stop within 10 s;
    0: no delay)."""

    # -- one machine

    data_dir: Path = Path(".clickstream")
    """The local servers' data, pids and logs, and the workers' RocksDB state."""
    local_worker_nice: int = Field(default=10, ge=0, le=19)
    """``clickstream run`` starts its worker this much nicer than the gateway: on one machine
    the answers a client waits for go first and the worker catches up behind (0: same
    priority)."""

    # -- Kafka and MongoDB

    kafka_bootstrap: str | None = None
    """An external Kafka (``host:port,...``): no local broker is started."""
    mongodb_uri: SecretStr | None = None
    """An external MongoDB: no local ``mongod`` is started."""
    kafka_port: int | None = Field(default=None, ge=1, le=65535)
    """The local broker's port; a free one when unset."""
    mongodb_port: int | None = Field(default=None, ge=1, le=65535)
    """The local ``mongod``'s port; a free one when unset."""
    mongodb_database: str = "clickstream"
    """The database of the batches."""
    mongodb_server_selection_timeout_seconds: float = Field(default=10.0, gt=0)
    """A MongoDB operation fails once no usable server was found in this time."""
    topic_prefix: str = "clickstream."
    """The prefix of every topic and consumer group of the deployment."""
    topic_partitions: int = Field(default=6, ge=1)
    """Partitions of the sessions, events and dead-letter topics (and of the workers'
    changelog): how many workers can share the load."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Copies of every topic the pipeline creates (3 in production); ``min.insync.replicas``
    is one less (at least 1)."""
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a request waits for Kafka's acknowledgement before it is answered 503."""
    retry_after_seconds: int = Field(default=2, ge=1)
    """The ``Retry-After`` of a 503."""
    kafka_linger_ms: float = Field(default=1.0, ge=0)
    """How long the gateway's producer gathers messages into one request to the broker."""
    kafka_extra_config: dict[str, SecretStr] = Field(default_factory=dict)
    """More librdkafka settings for every Kafka client, as a JSON object (security, tuning);
    secret: it holds SASL and key passwords."""

    # -- input limits: beyond them a request is refused with a 4xx and publishes nothing

    max_id_length: int = Field(default=DEFAULT_MAX_ID_LENGTH, ge=1)
    """The longest session, event, object, user or release id (characters)."""
    max_events_per_request: int = Field(default=DEFAULT_MAX_EVENTS_PER_REQUEST, ge=1)
    """The most events in one request."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """The largest request body: a request fits in one Kafka message."""
    created_at_max_age_seconds: int = Field(default=DEFAULT_CREATED_AT_MAX_AGE_SECONDS, ge=0)
    """A ``created_at`` older than this is refused."""
    created_at_max_ahead_seconds: int = Field(default=DEFAULT_CREATED_AT_MAX_AHEAD_SECONDS, ge=0)
    """A ``created_at`` further ahead of the server's clock than this is refused."""

    # -- the stream worker

    worker_store: Literal["memory", "rocksdb"] = "rocksdb"
    """Where a worker keeps its partitions' state: on disk (RocksDB under the data dir, its
    memory bounded by the cache settings, a restart reading only the changelog's tail) or in
    memory (rebuilt from the whole changelog at every start)."""
    worker_rocksdb_block_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """RocksDB's block cache, shared by all the partitions of a worker."""
    worker_rocksdb_write_buffer_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    """Each of RocksDB's two write buffers (memtables), shared by all the partitions."""
    worker_rocksdb_max_open_files: int = Field(default=256, ge=16)
    """Files RocksDB keeps open."""
    worker_batch_max_messages: int = Field(default=5000, ge=1)
    """At most this many messages of a partition are committed together."""
    worker_commit_interval_seconds: float = Field(default=0.05, gt=0)
    """A partition's batch is committed (one Kafka transaction) at most this long after its
    first message: at a low rate a transaction is paid once per interval, not per message;
    the state a worker shows lags its input by about this much."""
    worker_source_purge_seconds: float = Field(default=0.0, ge=0)
    """Every this many seconds a worker deletes from the sessions and events topics what it
    has handled and committed (DeleteRecords: the Delete operation on those topics); 0, the
    default: never, the topics keep their retention. ``clickstream run`` sets 10 for its
    local broker, whose cost per request grows with everything it holds."""
    worker_web_host: str = "127.0.0.1"
    """Where a worker serves sessions, readiness and metrics, and the address it gives the
    others to reach it (loopback: only the gateway needs it)."""
    worker_web_port: int | None = Field(default=None, ge=1, le=65535)
    """The worker's web port: 6066 for ``clickstream worker`` when unset, a free one for
    the worker ``clickstream run`` starts."""
    worker_id: str | None = None
    """The worker's static identity in its consumer group: restarted with the same id, it
    takes its partitions back at once (unique per running worker; default
    ``<hostname>-<web port>``)."""
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:6066"]
    )
    """Workers the gateway reads sessions from, comma-separated: any one asks the owner."""
    worker_request_timeout_seconds: float = Field(default=5.0, gt=0)
    """The gateway's wait for a worker's answer (session reads, readiness)."""
    ready_grace_seconds: float = Field(default=10.0, ge=0)
    """The gateway's ``/ready`` turns 503 only once its Kafka metadata check has failed
    this long without a success between (0: at the first failure); draining, a producer
    that failed for good and a publish Kafka left unacknowledged count at once."""
    ready_requires_worker: bool = False
    """The gateway's ``/ready`` also needs a worker's ``/ready/`` (``clickstream run`` sets
    it: there the gateway is of no use without its worker)."""
    worker_session_timeout_seconds: float = Field(default=10.0, ge=6)
    """A worker that stopped answering loses its partitions after this (Apache Kafka)."""
    worker_rebalance_timeout_seconds: float = Field(default=20.0, ge=6)
    """How long a rebalance waits for the workers to join again."""
    worker_idle_poll_seconds: float = Field(default=0.05, ge=0)
    """An idle worker pauses its partitions and looks at their end offsets this often, for
    brokers that answer an empty fetch at once (the local one); 0: never pause (Apache
    Kafka holds an empty fetch itself)."""
    worker_fetch_pause_seconds: float = Field(default=0.01, ge=0)
    """After a read that left nothing buffered, a worker pauses its partitions this long
    before fetching again, so that one fetch brings what came meanwhile: a broker that
    answers an empty fetch at once (the local one) is otherwise asked without pause, at the
    CPU of both; costs the state up to this much lag. 0: fetch continuously."""
    orphan_event_wait_seconds: float = Field(default=3600.0, gt=0)
    """Events of a session never registered wait this long from when a worker read them,
    then go to the dead-letter topic; those of a retired session then join its released
    copy."""
    tick_interval_seconds: float = Field(default=30.0, gt=0)
    """How often the release coordinator ticks every partition (orphan expiry, retention)."""
    release_history: int = Field(default=20, ge=2)
    """Completed releases each partition remembers, to report its part again if asked."""
    session_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    """A session released with everything it has leaves the worker's state once quiet this
    long (its copy stays in MongoDB; later events bring it back)."""
    worker_retry_seconds: float = Field(default=120.0, gt=0)
    """How long a partition whose handling fails for a server's reason (MongoDB or Kafka
    away) is retried before the worker stops (exit code 3) to start again from its state;
    also how long a starting worker waits for MongoDB's primary."""
    changelog_segment_bytes: int = Field(default=4 * 1024 * 1024, ge=1024 * 1024)
    """Segment size of the workers' compacted changelog: bounds what a restore reads beyond
    the live state (set when the topic is created)."""

    # -- security (comma-separated lists: a new value is added before the old one goes)

    internal_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Bearer tokens of the internal endpoints; none refuses every call (``clickstream run``
    makes its own)."""
    ingest_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """``X-Clickstream-Key`` values the ingest endpoints require; none leaves them open."""
    control_secret: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Signs the pipeline's control messages (the first signs, each one verifies); a worker
    without one does not start (``clickstream run`` makes its own)."""
    control_max_clock_skew_seconds: float = Field(default=3600.0, gt=0)
    """A release marker further ahead of the worker's clock is refused."""
    user_id_key: SecretStr | None = None
    """With it, producers publish ``HMAC-SHA256(key, user_id)`` (hex) in place of every
    ``user_id``: the raw id is stored nowhere. Off when unset. A new key gives every user a new
    pseudonym from then on (sessions before keep the old one): rotate at a batch boundary and
    keep the old key while its sessions may still be looked up."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Browser origins allowed to call the public endpoints; none by default."""

    # -- releases

    release_wait_seconds: float = Field(default=30.0, gt=0)
    """How long a release request waits for its batch before answering 202 (and
    ``clickstream release --via kafka`` for its answer)."""
    release_heal_seconds: float = Field(default=60.0, gt=0)
    """A batch still releasing this long after its markers were sent gets them again, on
    the partitions that have not reported their part."""
    batch_retention_days: float | None = Field(default=None, gt=0)
    """Released batches older than this are removed from MongoDB (their sessions and
    events; the batch's document stays, status ``expired``), unless a batch follower that
    keeps its batches has not exported them yet. Unset: batches are kept for ever."""

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

    @field_validator("internal_tokens", "ingest_keys", "control_secret", "user_id_key")
    @classmethod
    def _no_placeholder(cls, value: object) -> object:
        """The deploy files' examples (``replace-with-a-random-token``) are refused, so a
        deployment never runs on a secret that is in git."""
        values = value if isinstance(value, list) else [value]
        for secret in values:
            if isinstance(secret, SecretStr) and _PLACEHOLDER.search(secret.get_secret_value()):
                raise ValueError(
                    "a placeholder, not a secret: set a random value, e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return value

    def kafka_common_config(self, bootstrap: str | None = None) -> KafkaConfig:
        """librdkafka settings shared by every client of the pipeline."""
        servers = bootstrap or self.kafka_bootstrap
        if not servers:
            raise ValueError("no Kafka bootstrap servers: set CLICKSTREAM_KAFKA_BOOTSTRAP")
        return {"bootstrap.servers": servers, **self.kafka_extra}

    @property
    def kafka_extra(self) -> dict[str, str]:
        """``CLICKSTREAM_KAFKA_EXTRA_CONFIG`` in clear, for the Kafka clients only."""
        return {key: value.get_secret_value() for key, value in self.kafka_extra_config.items()}

    def kafka_producer_config(self, bootstrap: str | None = None) -> KafkaConfig:
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
    def worker_port(self) -> int:
        """The worker's web port: ``worker_web_port``, else 6066."""
        return self.worker_web_port or DEFAULT_WORKER_PORT

    @property
    def worker_instance_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{self.worker_port}"

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
