"""``CLICKSTREAM_KAFKA_EXTRA_CONFIG`` for the one aiokafka client of the worker (the
request that takes a stopping worker out of its group, see ``group``): the librdkafka
security settings every other client takes as they are, mapped to aiokafka's, so it
reaches a cluster that needs SASL or TLS like the rest of the pipeline."""

from __future__ import annotations

import ssl
from typing import TypedDict

from stream_app.exceptions import UnsupportedKafkaSecurityError

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


class AiokafkaSecurity(TypedDict, total=False):
    """The security arguments of an aiokafka client."""

    security_protocol: str
    ssl_context: ssl.SSLContext
    sasl_mechanism: str
    sasl_kerberos_service_name: str
    sasl_plain_username: str | None
    sasl_plain_password: str | None


def aiokafka_security(extra: dict[str, str]) -> AiokafkaSecurity:
    """aiokafka client arguments equivalent to the librdkafka ``extra``.

    Keys that are not about security (tuning of the librdkafka clients) do not apply and
    are skipped; an unknown ``ssl.*`` or ``sasl.*`` key, or a mechanism aiokafka lacks,
    raises :class:`UnsupportedKafkaSecurityError`.
    """
    protocol = extra.get("security.protocol", "PLAINTEXT").upper()
    known = {"security.protocol"} | _TLS_KEYS | _SASL_KEYS | _KERBEROS_KEYS
    for key in sorted(extra):
        if key not in known and key.startswith(("ssl.", "sasl.")):
            raise UnsupportedKafkaSecurityError(
                f"CLICKSTREAM_KAFKA_EXTRA_CONFIG: the worker cannot apply {key}"
            )
    if protocol == "PLAINTEXT":
        return {}
    if protocol == "SSL":
        return {"security_protocol": "SSL", "ssl_context": ssl_context(extra)}
    if protocol not in {"SASL_PLAINTEXT", "SASL_SSL"}:
        raise UnsupportedKafkaSecurityError(f"unknown security.protocol {protocol}")
    mechanism = extra.get("sasl.mechanism", extra.get("sasl.mechanisms", "GSSAPI")).upper()
    if mechanism not in _SASL_MECHANISMS:
        raise UnsupportedKafkaSecurityError(f"the worker cannot use sasl.mechanism {mechanism}")
    found: AiokafkaSecurity = {"security_protocol": protocol, "sasl_mechanism": mechanism}
    if protocol == "SASL_SSL":
        found["ssl_context"] = ssl_context(extra)
    if mechanism == "GSSAPI":
        found["sasl_kerberos_service_name"] = extra.get("sasl.kerberos.service.name", "kafka")
    else:
        found["sasl_plain_username"] = extra.get("sasl.username")
        found["sasl_plain_password"] = extra.get("sasl.password")
    return found
