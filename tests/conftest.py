pytest_plugins = [
    "tests.fixtures",
    "tests.producers.fixtures",
]
