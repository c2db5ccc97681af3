"""A lake on local disk or on S3 (moto), and readers that open it the way analysts do."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from tripwire.sinks.config import SinkConfig
from tripwire.sinks.lake import Lake, open_lake
from tests.fixtures.s3 import S3Bucket


@dataclass
class LakeSetup:
    kind: str
    url: str
    cfg: SinkConfig
    lake: Lake
    bucket: S3Bucket | None = None

    @property
    def storage(self) -> dict[str, Any] | None:
        return self.bucket.server.storage_options() if self.bucket else None

    def config(self, **changes: Any) -> SinkConfig:
        return replace(self.cfg, **changes)

    def duckdb(self, sql: str = "SELECT * FROM lake", invalid: bool = False) -> pd.DataFrame:
        """``sql`` over the README's views: ``lake`` is ``read_parquet('<lake>/**/*.parquet',
        hive_partitioning=true, union_by_name=true)``, ``invalid`` the invalid table."""
        con = duckdb.connect()
        if self.bucket is not None:
            import s3fs

            con.register_filesystem(s3fs.S3FileSystem(skip_instance_cache=True, **self.storage))  # type: ignore[arg-type]
        con.execute(f"CREATE VIEW lake AS SELECT * FROM read_parquet('{self.url}/**/*.parquet', "
                    "hive_partitioning=true, union_by_name=true)")
        if invalid:
            con.execute(f"CREATE VIEW invalid AS SELECT * FROM read_parquet('{self.url}/_invalid/**/*.parq', "
                        "hive_partitioning=true)")
        try:
            return con.execute(sql).df()
        finally:
            con.close()

    def pandas(self, table: str = "") -> pd.DataFrame:
        """``pandas.read_parquet(lake)`` with no option (``table="_invalid"``: the invalid table)."""
        return pd.read_parquet(f"{self.url}/{table}" if table else self.url, storage_options=self.storage)

    def env(self) -> dict[str, str]:
        """Variables for a ``tripwire`` subprocess writing this lake."""
        env = {"TRIPWIRE_SINK__LAKE_URL": self.url}
        if self.bucket is not None:
            env.update(self.bucket.server.env())
        return env


def make_lake(kind: str, tmp_path: Path, bucket: S3Bucket | None, **cfg: Any) -> LakeSetup:
    base = dict(max_file_age_s=0.3, max_late_file_age_s=0.6)
    base.update(cfg)
    if kind == "local":
        url = str(tmp_path / "lake")
        sc = SinkConfig(lake_url=url, **base)  # type: ignore[arg-type]
        return LakeSetup(kind, url, sc, open_lake(url))
    assert bucket is not None
    url = f"{bucket.url}/lake"
    srv = bucket.server
    sc = SinkConfig(lake_url=url, s3_endpoint_url=srv.endpoint_url, s3_key=srv.key, s3_secret=srv.secret,
                    s3_region=srv.region, **base)  # type: ignore[arg-type]
    return LakeSetup(kind, url, sc, open_lake(url, sc.storage_options({})), bucket)
