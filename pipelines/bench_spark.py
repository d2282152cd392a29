"""Offline scoring throughput on Spark against the local path, on a generated Parquet file.

    python -m pipelines.bench_spark [--rows 10000000] [--masters local[1],local[2]]
                                    [--model DIR] [--keep DIR]

Generates ``--rows`` rows (8 features driven by 3 latent factors, every 100th row pushed off
them, an int64 ``id``) deterministically from ``--seed``, written in chunks to a Parquet file
in a temporary folder (deleted at the end unless ``--keep``); trains a small model of the
tests' ``tiny_bundle`` recipe with ``id`` as its id column unless ``--model`` is given. Then
scores the file once per engine, each in a fresh process: the local path (``score_file``,
Parquet out) and ``score_parquet`` on each Spark master. Prints rows/s (rows over the time
of the scoring call: for Spark the row count job, the bundle's broadcast, the workers'
TensorFlow import and model load, scoring and writing; the session's start apart), each
engine's ratio to the local path, the load average before and after each run, and checks
that every engine wrote the same row numbers with the same scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = 8
CHUNK_ROWS = 500_000
ROW_GROUP_ROWS = 250_000


def generate(path: Path, rows: int, seed: int) -> None:
    """``rows`` rows in chunks, each chunk from its own seeded generator (the same file
    whatever the chunk size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mixing = np.random.default_rng(seed).normal(size=(3, FEATURES))
    names = [f"f{i}" for i in range(FEATURES)]
    writer = None
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        rng = np.random.default_rng([seed, index])
        x = rng.normal(size=(n, 3)) @ mixing + 0.1 * rng.normal(size=(n, FEATURES))
        ids = np.arange(start, start + n, dtype=np.int64)
        far = ids % 100 == 0
        x[far] = 4 * rng.normal(size=(int(far.sum()), FEATURES))
        columns = {"id": ids, **{name: x[:, j].astype(np.float32) for j, name in enumerate(names)}}
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    writer.close()


def train(path: Path, seed: int) -> None:
    """The tests' tiny_bundle recipe (3,000 normal rows, 300 steps), with ``id`` as its id
    column."""
    import anomaly

    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(seed).normal(size=(3, FEATURES))
    x = rng.normal(size=(3000, 3)) @ mixing + 0.1 * rng.normal(size=(3000, FEATURES))
    config = anomaly.Config().updated(training={"steps": 300}, data={"id_column": "id"})
    detector = anomaly.train(x, config, feature_names=[f"f{i}" for i in range(FEATURES)])
    detector.save(path)


def child(engine: str, model: str, data: str, out: str) -> dict:
    """One engine's run in this (fresh) process."""
    if engine == "local":
        import anomaly
        from anomaly.files import score_file

        detector = anomaly.load(model)
        started = time.perf_counter()
        summary = score_file(detector, data, out)
        return {"seconds": time.perf_counter() - started, "rows": summary.rows_scored}
    from anomaly.spark import score_parquet, session

    started = time.perf_counter()
    spark = session(engine)
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    run = score_parquet(spark, data, out, model)
    return {
        "seconds": time.perf_counter() - started,
        "rows": run.rows_scored,
        "session_s": start_s,
        "partitions": run.partitions,
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    import pyspark

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.platform()}, Python "
        f"{platform.python_version()}, pyspark {pyspark.__version__}, "
        f"{java.splitlines()[0] if java else 'no java'}"
    )


def same_scores(local: Path, spark: Path) -> float:
    """Max |score difference| over all rows; the row numbers must be the same, in order."""
    import pyarrow.parquet as pq

    a = pq.read_table(local, columns=["row", "score"])
    b = pq.read_table(spark, columns=["row", "score"])
    if not np.array_equal(a["row"].to_numpy(), b["row"].to_numpy()):
        raise SystemExit(f"{spark}: rows differ from the local path's")
    return float(np.max(np.abs(a["score"].to_numpy() - b["score"].to_numpy())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--masters", default="local[1],local[2]")
    parser.add_argument("--model", help="Bundle to score with (default: train a small one).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="Work in this folder and keep it (data, model, outputs).")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "MODEL", "DATA", "OUT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    root = Path(args.keep or tempfile.mkdtemp(prefix="anomaly-bench-spark-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        data = root / "records.parquet"
        started = time.perf_counter()
        generate(data, args.rows, args.seed)
        print(
            f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        model = args.model
        if model is None:
            model = str(root / "model")
            train(Path(model), args.seed)
        engines = ["local", *args.masters.split(",")]
        results = {}
        for engine in engines:
            out = root / f"scores-{engine.replace('[', '').replace(']', '')}.parquet"
            before = os.getloadavg()[0]
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.bench_spark", "--child", engine, model]
                + [str(data), str(out)],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                sys.exit(f"{engine} failed:\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result.update(out=out, load=(before, os.getloadavg()[0]))
            results[engine] = result
            print(f"{engine}: {result['rows'] / result['seconds']:,.0f} rows/s", flush=True)

        print(f"\nmachine: {machine()}")
        print(f"{args.rows:,} rows, {FEATURES} features; load average (1 min) before / after\n")
        print(
            "| engine | partitions | session start s | scoring s | rows/s | vs local path |"
            " load before / after |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = results["local"]["rows"] / results["local"]["seconds"]
        for engine, r in results.items():
            rate = r["rows"] / r["seconds"]
            name = "local path (score_file)" if engine == "local" else f"Spark {engine}"
            session_s = f"{r['session_s']:.1f}" if "session_s" in r else "-"
            print(
                f"| {name} | {r.get('partitions', '-')} | {session_s} | {r['seconds']:.1f} | "
                f"{rate:,.0f} | {rate / base:.2f} | {r['load'][0]:.2f} / {r['load'][1]:.2f} |"
            )
        for engine in engines[1:]:
            diff = same_scores(results["local"]["out"], results[engine]["out"])
            print(f"\n{engine}: same rows as the local path, max |score difference| {diff:.2e}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
