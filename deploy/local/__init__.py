"""The pipeline on one machine: real local servers started and stopped by pid
(``servers``), and ``clickstream run`` (``run``). Development and tests only: production
runs the image of ``deploy/docker`` on Apache Kafka and a MongoDB replica set."""
