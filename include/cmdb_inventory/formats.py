"""
The snapshot's other files: Parquet next to the CSV (optional), the Athena tables' symlink manifests, and
their copies in ``latest/``.

Parquet holds the CSV's columns, typed: ``LaunchTime`` and ``CollectedAt`` as ``timestamp[ms, UTC]``
(null when empty), the list columns (``SecurityGroupIds``, ``EbsVolumeIds``, ``Ipv6Addresses``) as lists
of strings (empty when the cell is), every other column a string (``Tags`` the same JSON text), the
configured tag columns last. Cells hold exactly the CSV's values, including the leading ``'`` of formula
neutralisation: once written, a neutralising quote cannot be
told apart from a quote that was in the data, so removing it would alter data. It is written by streaming
the merged CSV in blocks into row groups, spooled to disk and uploaded a chunk at a time through the store
(like the CSV), so memory stays bounded whatever the number of instances.

Athena reads every file under a table's (or partition's) location, and a snapshot folder also holds
``manifest.json`` and ``changes.csv``; so the tables are symlink tables (as S3 Inventory's are): each
snapshot writes ``{prefix}/athena/{table}/ds=YYYY-MM-DD/symlink.txt`` naming its one data file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from include.cmdb_inventory.contract import (
    COLUMNS,
    CSV_NAME,
    LIST_COLUMNS,
    LIST_SEPARATOR,
    PARQUET_NAME,
    SCHEMA_VERSION,
)
from include.cmdb_inventory.storage import CHUNK, digest_of, spool

if TYPE_CHECKING:
    import pyarrow as pa

    from include.cmdb_inventory.storage import SnapshotStore

log = logging.getLogger(__name__)

PARQUET_SCHEMA_VERSION = 2  # 2: the CSV's schema 2 columns, its list columns as lists
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
PARQUET_COMPRESSION = "snappy"
TIMESTAMP_COLUMNS = ("LaunchTime", "CollectedAt")
ROW_GROUP_ROWS = 50_000
CSV_BLOCK_BYTES = CHUNK // 4  # the streaming reader reads ~40 blocks ahead: 256 KiB keeps that ~10 MiB
METADATA_PREFIX = "cmdb_ec2_inventory."

ATHENA_DIR = "athena"
SYMLINK_NAME = "symlink.txt"
CSV_TABLE = "ec2_inventory_csv"
PARQUET_TABLE = "ec2_inventory_parquet"


def _arrow_type(column: str) -> pa.DataType:
    import pyarrow as pa

    if column in TIMESTAMP_COLUMNS:
        return pa.timestamp("ms", tz="UTC")
    if column in LIST_COLUMNS:
        return pa.list_(pa.string())
    return pa.string()


def arrow_schema(metadata: Mapping[str, str] | None = None, columns: Sequence[str] = COLUMNS) -> pa.Schema:
    """The Parquet schema: the CSV's columns in order, timestamps and lists typed, the rest strings."""
    import pyarrow as pa

    return pa.schema([pa.field(c, _arrow_type(c)) for c in columns], metadata=dict(metadata or {}))


def _as_lists(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with its list columns (read as text) split on ``;``: an empty cell is an empty list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    for field, array in zip(schema, batch.columns, strict=True):
        if field.name in LIST_COLUMNS:
            empty = pa.scalar([], field.type)
            array = pc.if_else(pc.equal(array, ""), empty, pc.split_pattern(array, LIST_SEPARATOR))
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def parquet_metadata(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Key-value metadata of the Parquet file: schema versions and the snapshot it was made from."""
    return {
        f"{METADATA_PREFIX}schema_version": str(PARQUET_SCHEMA_VERSION),
        f"{METADATA_PREFIX}csv_schema_version": str(manifest.get("schema_version", SCHEMA_VERSION)),
        f"{METADATA_PREFIX}ds": str(manifest.get("ds", "")),
        f"{METADATA_PREFIX}dag_run_id": str(manifest.get("dag_run_id", "")),
        f"{METADATA_PREFIX}csv_sha256": str(manifest.get("csv_sha256", "")),
        f"{METADATA_PREFIX}cells": "as in the CSV (formula-neutralised with a leading ')",
    }


def csv_to_parquet(
    csv_file: IO[bytes],
    out: IO[bytes],
    metadata: Mapping[str, str] | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    block_bytes: int = CSV_BLOCK_BYTES,
    memory_pool: pa.MemoryPool | None = None,
    columns: Sequence[str] = COLUMNS,
) -> dict[str, int]:
    """
    Convert the merged CSV (a binary file, read from its start) into Parquet in ``out``, streaming: at
    most one row group (plus one CSV block) is in memory. Returns the row and row-group counts.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = arrow_schema(metadata, columns)
    # The CSV is read with the list columns as text; each batch is then split into lists.
    read_types = {f.name: pa.string() if f.name in LIST_COLUMNS else f.type for f in schema}
    csv_file.seek(0)
    reader = pacsv.open_csv(
        csv_file,
        read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
        memory_pool=memory_pool,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=read_types,
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if reader.schema.names != list(columns):
        raise ValueError(f"the CSV's header is {reader.schema.names}, not the schema's {list(columns)}")
    rows = row_groups = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with pq.ParquetWriter(out, schema, compression=PARQUET_COMPRESSION, memory_pool=memory_pool) as writer:
        for batch in reader:
            pending.append(_as_lists(batch, schema))
            pending_rows += batch.num_rows
            rows += batch.num_rows
            while pending_rows >= row_group_rows:
                table = pa.Table.from_batches(pending, schema=schema)
                writer.write_table(table.slice(0, row_group_rows), row_group_size=row_group_rows)
                row_groups += 1
                rest = table.slice(row_group_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=row_group_rows)
            row_groups += 1
    out.flush()
    return {"row_count": rows, "row_groups": row_groups}


def symlink_key(store: SnapshotStore, table: str, ds: str) -> str:
    """The symlink manifest of one Athena table's partition."""
    return f"{store.layout.prefix}/{ATHENA_DIR}/{table}/ds={ds}/{SYMLINK_NAME}"


def _put_symlink(store: SnapshotStore, table: str, ds: str, data_key: str) -> str:
    key = symlink_key(store, table, ds)
    store.put_bytes(key, f"{store.uri(data_key)}\n".encode(), "text/plain; charset=utf-8")
    return key


def write_formats(
    store: SnapshotStore, ds: str, manifest: Mapping[str, Any], csv_file: IO[bytes], *, parquet: bool
) -> dict[str, Any]:
    """
    Write the snapshot's Parquet file (when ``parquet``) and the Athena symlink manifests; return the
    manifest's ``parquet`` and ``athena`` entries. Without Parquet, a Parquet file (and its symlink) left
    by an earlier run of the same date is removed, so the date's files always belong together.
    """
    parquet_key = store.layout.snapshot(ds, PARQUET_NAME)
    # The symlinks name what Athena reads: the date's fixed-name files when the caller gives them.
    csv_key = str(manifest.get("csv_key") or store.layout.snapshot(ds, CSV_NAME))
    parquet_link_target = str(manifest.get("parquet_key") or parquet_key)
    parquet_entry: dict[str, Any] | None = None
    if parquet:
        # Spooled like the merged CSV (on disk beyond CHUNK here: the digest needs the whole file before
        # the upload), then the store's upload: one chunk in memory at a time, whatever the file's size.
        with spool(CHUNK) as out:
            columns = list(manifest.get("columns") or COLUMNS)
            counts = csv_to_parquet(csv_file, out, parquet_metadata(manifest), columns=columns)
            if counts["row_count"] != int(manifest.get("row_count") or 0):
                raise RuntimeError(
                    f"Parquet has {counts['row_count']} rows, the manifest {manifest.get('row_count')}"
                )
            sha256, size = digest_of(out)
            store.upload_file(
                out,
                parquet_key,
                PARQUET_CONTENT_TYPE,
                {
                    "sha256": sha256,
                    "rows": str(counts["row_count"]),
                    "schema-version": str(PARQUET_SCHEMA_VERSION),
                },
            )
        parquet_entry = {
            "key": parquet_key,
            "uri": store.uri(parquet_key),
            "schema_version": PARQUET_SCHEMA_VERSION,
            "row_count": counts["row_count"],
            "row_groups": counts["row_groups"],
            "bytes": size,
            "sha256": sha256,
            "compression": PARQUET_COMPRESSION,
        }
        log.info("Wrote %s (%d rows, %d bytes)", store.uri(parquet_key), counts["row_count"], size)
    else:
        # A file of an earlier run of this date that this snapshot no longer has (no error when none).
        store.delete(parquet_key)
        store.delete(symlink_key(store, PARQUET_TABLE, ds))
    athena = {
        "csv_symlink_key": _put_symlink(store, CSV_TABLE, ds, csv_key),
        "parquet_symlink_key": _put_symlink(store, PARQUET_TABLE, ds, parquet_link_target)
        if parquet
        else None,
    }
    return {"parquet": parquet_entry, "athena": athena}


def publish_latest(store: SnapshotStore, manifest: Mapping[str, Any]) -> None:
    """Copy the snapshot's ``changes.csv`` and Parquet file to ``latest/`` (no stale Parquet is left)."""
    layout = store.layout
    changes_key = (manifest.get("changes") or {}).get("key")
    if changes_key:
        store.copy(changes_key, layout.latest(changes_key.rsplit("/", 1)[-1]))
    parquet = manifest.get("parquet")
    if parquet:
        store.copy(parquet["key"], layout.latest(PARQUET_NAME))
    else:
        store.delete(layout.latest(PARQUET_NAME))
