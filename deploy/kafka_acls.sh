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

# Workers, least privilege: read the ingest and releases topics; write markers and ticks
# (ingest topics), part reports (releases), announcements (batches), dead letters; own
# their state changelog (created by the first worker); their groups; their transactions.
for topic in sessions events releases; do
  acl --allow-principal "${WORKER}" --operation Read --operation Write --operation Describe --topic "${PREFIX}${topic}"
done
for topic in batches dead-letter; do
  acl --allow-principal "${WORKER}" --operation Write --operation Describe --topic "${PREFIX}${topic}"
done
acl --allow-principal "${WORKER}" --operation Read --operation Write --operation Describe --operation Create --topic "${PREFIX}stream-state-changelog"
for group in stream stream-restore release-coordinator; do
  acl --allow-principal "${WORKER}" --operation Read --operation Describe --group "${PREFIX}${group}"
done
acl --allow-principal "${WORKER}" --operation Write --operation Describe --resource-pattern-type prefixed --transactional-id "${PREFIX}stream-state-"
acl --allow-principal "${WORKER}" --operation Write --operation Describe --transactional-id "${PREFIX}release-coordinator"
acl --allow-principal "${WORKER}" --operation IdempotentWrite --cluster

# Operators: release requests, dead letters replayed to the ingest topics, and reading any
# topic in groups of their own (release --via kafka waits in release-waiter-<uuid>,
# dead-letters reads in dead-letters-<uuid>).
for topic in releases sessions events; do
  acl --allow-principal "${OPERATOR}" --operation Write --operation Describe --topic "${PREFIX}${topic}"
done
acl --allow-principal "${OPERATOR}" --operation IdempotentWrite --cluster
acl --allow-principal "${OPERATOR}" --operation Read --operation Describe --resource-pattern-type prefixed --topic "${PREFIX}"
for group in clickstream-operator- release-waiter- dead-letters-; do
  acl --allow-principal "${OPERATOR}" --operation Read --resource-pattern-type prefixed --group "${group}"
done

# Fine-tuning jobs (consumers/batch_reader.py, batch follow): the batch topic.
acl --allow-principal "${FINE_TUNING}" --operation Read --operation Describe --topic "${PREFIX}batches"
# Groups: BatchReader's default (fine-tuning...) and batch follow's (batch-follower...).
for group in fine-tuning batch-follower; do
  acl --allow-principal "${FINE_TUNING}" --operation Read --resource-pattern-type prefixed --group "${group}"
done
