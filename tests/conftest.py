pytest_plugins = [
    "tests.fixtures",
    "tests.faults.fixtures",
    "tests.producers.fixtures",
    "tests.stream_app.fixtures",
]
