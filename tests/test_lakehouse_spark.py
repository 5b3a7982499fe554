"""Another engine reads the table: Apache Spark (PySpark, Iceberg's Spark runtime from Maven Central) through
the same catalog (Iceberg's JDBC catalog on the same PostgreSQL database) counts exactly the events the
consumer wrote, with the reference hashed and the ``extra`` map intact."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from pathlib import Path

import pytest

if not os.environ.get("CI"):  # CI installs the extra (make test): there a skip would hide a broken install
    pytest.importorskip("pyiceberg")
if not os.environ.get("CI"):
    pytest.importorskip("pyspark")

from passpost.consumers import testing  # noqa: E402
from passpost.consumers.lakehouse import LakehouseConsumer  # noqa: E402
from tests.spark_jars import spark_jars  # noqa: E402
from tests.test_lakehouse import HASH_KEY, lakehouse_settings, table_state  # noqa: E402

pytestmark = pytest.mark.kafka


def test_spark_reads_the_table_through_the_same_catalog(kafka_bootstrap: str, postgres_dsn: str,
                                                        tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.fail("Spark needs Java 17 (.ci/install-deps installs it)")
    settings = testing.settings_for(kafka_bootstrap, partitions=2, **lakehouse_settings(postgres_dsn, tmp_path))
    events = [testing.event(reference_value=f"+4479{n:08d}", extra={"PASSDATA": f"<p>{n}</p>", "NEW": "x"})
              for n in range(500)]
    testing.produce(settings, events)
    testing.consume(LakehouseConsumer(settings), settings)
    assert table_state(settings) == (500, 500, 500)

    from pyspark.sql import SparkSession

    jdbc = "jdbc:" + postgres_dsn.replace("postgres@", "")  # postgresql://postgres@host:port/db -> host:port/db
    catalog = "spark.sql.catalog.passpost"
    os.environ.setdefault("PYSPARK_PYTHON", "python3")
    spark = (SparkSession.builder.master("local[1]").appName("passpost-lakehouse-test")
             .config("spark.jars", ",".join(str(jar) for jar in spark_jars()))
             .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
             .config(catalog, "org.apache.iceberg.spark.SparkCatalog")
             .config(f"{catalog}.type", "jdbc")
             .config(f"{catalog}.uri", jdbc)
             .config(f"{catalog}.jdbc.user", "postgres")
             .config(f"{catalog}.jdbc.schema-version", "V0")  # the catalog tables as PyIceberg made them
             .config(f"{catalog}.warehouse", str(settings.iceberg_warehouse))
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1")
             .config("spark.driver.memory", "512m").getOrCreate())
    try:
        assert spark.sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM passpost.passpost.pass_postbacks"
                         ).collect()[0].asDict() == {"n": 500, "d": 500}
        rows = {row["serial_number"]: row for row in spark.sql(
            "SELECT serial_number, reference_value, extra FROM passpost.passpost.pass_postbacks").collect()}
        for n, event in enumerate(events):
            row = rows[event.serial_number]
            expected = hmac.new(HASH_KEY.encode(), f"+4479{n:08d}".encode(), hashlib.sha256).hexdigest()
            assert row["reference_value"] == f"hmac-sha256:{expected}"
            assert row["extra"] == {"PASSDATA": f"<p>{n}</p>", "NEW": "x"}
        # Spark sees the offsets the consumer keeps in the snapshot summaries, too.
        summary = spark.sql("SELECT summary FROM passpost.passpost.pass_postbacks.snapshots ORDER BY committed_at "
                            "DESC LIMIT 1").collect()[0]["summary"]
        assert settings.events_topic in summary["passpost.offsets"]
    finally:
        spark.stop()
