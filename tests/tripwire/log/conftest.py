from tests.fixtures.tansu import tansu, tansu_durable  # noqa: F401
