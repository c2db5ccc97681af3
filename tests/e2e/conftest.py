from tests.fixtures.s3 import moto_server, s3_bucket  # noqa: F401
from tests.fixtures.tansu import tansu, tansu_durable  # noqa: F401
