"""``CLICKSTREAM_KAFKA_EXTRA_CONFIG`` for the worker: the librdkafka security settings that
every other client takes as they are, mapped to faust's ``broker_credentials``, so the
worker joins a cluster that needs SASL or TLS like the rest of the pipeline."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import faust

from stream_app.exceptions import UnsupportedKafkaSecurityError

logger = logging.getLogger(__name__)

_SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI"}
_TLS_KEYS = {
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
}
_SASL_KEYS = {"sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"}
_KERBEROS_KEYS = {"sasl.kerberos.service.name", "sasl.kerberos.principal"}


def ssl_context(extra: dict[str, str]) -> ssl.SSLContext:
    """A TLS client context from librdkafka's ``ssl.*`` settings."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=extra.get("ssl.ca.location")
    )
    if "ssl.certificate.location" in extra:
        context.load_cert_chain(
            extra["ssl.certificate.location"],
            extra.get("ssl.key.location"),
            extra.get("ssl.key.password"),
        )
    if extra.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if extra.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def faust_kafka_security(extra: dict[str, str]) -> dict[str, Any]:
    """faust app settings (``broker_credentials``) equivalent to the librdkafka ``extra``.

    Keys that are not about security (tuning of the librdkafka clients) do not apply to
    faust's clients and are skipped with a log line; an unknown ``ssl.*`` or ``sasl.*``
    key, or a mechanism faust lacks, raises :class:`UnsupportedKafkaSecurityError`.
    """
    protocol = extra.get("security.protocol", "PLAINTEXT").upper()
    known = {"security.protocol"} | _TLS_KEYS | _SASL_KEYS | _KERBEROS_KEYS
    for key in sorted(extra):
        if key in known:
            continue
        if key.startswith(("ssl.", "sasl.")):
            raise UnsupportedKafkaSecurityError(
                f"CLICKSTREAM_KAFKA_EXTRA_CONFIG: the worker cannot apply {key}"
            )
        logger.info("kafka extra config not applied to the worker key=%s", key)
    if protocol == "PLAINTEXT":
        return {}
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ssl_context(extra))}
    if protocol not in {"SASL_PLAINTEXT", "SASL_SSL"}:
        raise UnsupportedKafkaSecurityError(f"unknown security.protocol {protocol}")
    mechanism = extra.get("sasl.mechanism", extra.get("sasl.mechanisms", "GSSAPI")).upper()
    if mechanism not in _SASL_MECHANISMS:
        raise UnsupportedKafkaSecurityError(f"the worker cannot use sasl.mechanism {mechanism}")
    context = ssl_context(extra) if protocol == "SASL_SSL" else None
    credentials: faust.types.auth.CredentialsT
    if mechanism == "GSSAPI":
        credentials = faust.GSSAPICredentials(
            kerberos_service_name=extra.get("sasl.kerberos.service.name", "kafka"),
            ssl_context=context,
        )
    else:
        credentials = faust.SASLCredentials(
            username=extra.get("sasl.username"),
            password=extra.get("sasl.password"),
            mechanism=mechanism,
            ssl_context=context,
        )
    return {"broker_credentials": credentials}
