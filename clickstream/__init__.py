"""Clickstream ingestion for search feedback.

Data flows one way: HTTP gateway (``producers``) -> Kafka topics (``schemas``)
-> stream tables (``stream_app``) -> MongoDB batches -> batch topic.
This package holds what every deployable shares: settings, errors and the CLI.
"""
