#!/usr/bin/env bash
# The Kafka ACLs of a production deployment (Apache Kafka's kafka-acls.sh), one principal
# per role. Prints the commands; pipe to bash to apply them:
#
#   deploy/kafka_acls.sh broker:9093 admin.properties | bash
#
# Environment: PREFIX (default "clickstream."), and the principals GATEWAY, PRODUCER,
# WORKER, OPERATOR, FINE_TUNING (default User:clickstream-<role>). Producers never get
# the releases topic; only the workers write markers and reports, which they also sign
# (CLICKSTREAM_CONTROL_SECRET) because producers must write the topics markers travel on.
set -euo pipefail

BOOTSTRAP=${1:?usage: kafka_acls.sh BOOTSTRAP ADMIN_CLIENT_PROPERTIES}
ADMIN_CONFIG=${2:?usage: kafka_acls.sh BOOTSTRAP ADMIN_CLIENT_PROPERTIES}
PREFIX=${PREFIX:-clickstream.}
GATEWAY=${GATEWAY:-User:clickstream-gateway}
PRODUCER=${PRODUCER:-User:clickstream-producer}
WORKER=${WORKER:-User:clickstream-worker}
OPERATOR=${OPERATOR:-User:clickstream-operator}
FINE_TUNING=${FINE_TUNING:-User:clickstream-fine-tuning}

acl() {
  echo "kafka-acls.sh --bootstrap-server ${BOOTSTRAP} --command-config ${ADMIN_CONFIG} --add $*"
}

# The gateway: sessions, events and release requests; idempotent producer.
for topic in sessions events releases; do
  acl --allow-principal "${GATEWAY}" --operation Write --operation Describe --topic "${PREFIX}${topic}"
done
acl --allow-principal "${GATEWAY}" --operation IdempotentWrite --cluster

# Services using producers/library.py: sessions and events only.
for topic in sessions events; do
  acl --allow-principal "${PRODUCER}" --operation Write --operation Describe --topic "${PREFIX}${topic}"
done
acl --allow-principal "${PRODUCER}" --operation IdempotentWrite --cluster

# Workers: read the pipeline's topics, write markers, ticks, reports, dead letters, batch
# announcements (in transactions) and their tables' changelogs (<prefix>stream-*).
acl --allow-principal "${WORKER}" --operation All --resource-pattern-type prefixed --topic "${PREFIX}"
acl --allow-principal "${WORKER}" --operation All --resource-pattern-type prefixed --group "${PREFIX}"
acl --allow-principal "${WORKER}" --operation All --resource-pattern-type prefixed --transactional-id "${PREFIX}"
acl --allow-principal "${WORKER}" --operation IdempotentWrite --cluster

# Operators: release requests, and reading any topic in groups of their own.
acl --allow-principal "${OPERATOR}" --operation Write --operation Describe --topic "${PREFIX}releases"
acl --allow-principal "${OPERATOR}" --operation Read --operation Describe --resource-pattern-type prefixed --topic "${PREFIX}"
acl --allow-principal "${OPERATOR}" --operation Read --resource-pattern-type prefixed --group clickstream-operator-

# Fine-tuning jobs (consumers/batch_reader.py): the batch topic, in groups of their own.
acl --allow-principal "${FINE_TUNING}" --operation Read --operation Describe --topic "${PREFIX}batches"
acl --allow-principal "${FINE_TUNING}" --operation Read --resource-pattern-type prefixed --group fine-tuning
