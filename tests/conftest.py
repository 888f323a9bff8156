pytest_plugins = [
    "tests.fixtures",
    "tests.producers.fixtures",
    "tests.stream_app.fixtures",
]
