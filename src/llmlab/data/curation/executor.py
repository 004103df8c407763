"""Running a pipeline: streaming, parallel, resumable, deterministic.

Three phases, each writing its results atomically (llmlab.core.io) so an interrupted run loses
at most the shards in flight and a re-run skips everything already finished:

  A. filter   one task per input file ("shard"), in parallel: read documents in batches of
              `batch_size`, run the per-document stages, stream the survivors to
              work/shard-NNNNN.jsonl.gz and their dedup keys and MinHash signatures to
              work/shard-NNNNN.keys / .sig (fixed-size binary rows); work/shard-NNNNN.stats.json
              is written last and marks the shard done.
  B. dedup    global, one process: memory-map every shard's keys and signatures in shard order,
              drop exact duplicates, then near duplicates (LSH over the survivors); the first
              document in corpus order survives. Result: work/dedup.npz + work/dedup.stats.json.
              Memory: 16 + 4*num_perm bytes per document (528 B at 128 permutations), not text.
  C. write    one task per shard, in parallel: out/part-NNNNN.jsonl.gz = survivors of A minus B.

Output order = sorted input file order, then document order, whatever the number of workers or
the engine, so two runs give byte-identical output (gzip headers carry no time or file name).
Engines: local processes (concurrent.futures, spawn) or a Dask cluster (`engine = "dask"`),
which runs the same shard functions on its workers; both must see the same filesystem.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_open, atomic_save, atomic_write_json
from llmlab.core.progress import progress
from llmlab.data.curation.decontam import Decontaminator
from llmlab.data.curation.dedup_exact import dedup_key, exact_duplicates
from llmlab.data.curation.minhash import near_duplicates, shingle_hashes, signatures
from llmlab.data.curation.parts import JsonlPart, ParquetPart, open_jsonl_out, parquet_schema
from llmlab.data.curation.pipeline import PipelineConfig, config_from_mapping
from llmlab.data.curation.readers import InputErrors, list_inputs, read_file
from llmlab.data.curation.stages import DOC_STAGES, StageStats, apply_doc_stages, empty_histograms, merge_histograms

WORK = "work"
KEY_BYTES = 16


def _read_jsonl(path: Path):
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
        for line in f:
            yield json.loads(line)


def _batches(iterator, size: int):
    batch = []
    for item in iterator:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def filter_shard(cfg_dict: dict, shard: int, path: str, work: str) -> dict:
    """Phase A for one input file (runs in a worker process). Returns the shard's stats."""
    cfg = config_from_mapping(cfg_dict)
    work_dir = Path(work)
    stats_path = work_dir / f"shard-{shard:05d}.stats.json"
    if stats_path.is_file():
        return json.loads(stats_path.read_text(encoding="utf-8"))
    start = time.perf_counter()
    errors = InputErrors()
    removal_log: list[dict] = []
    stats = {name: StageStats(log=removal_log) for name in DOC_STAGES}
    hist = empty_histograms()
    decontaminator = Decontaminator(cfg.decontam.eval_files, cfg.decontam.ngram) \
        if cfg.decontam.enabled and cfg.decontam.eval_files else None
    docs_read = kept = 0
    with atomic_open(work_dir / f"shard-{shard:05d}.jsonl.gz", "wb") as fdocs, \
            atomic_open(work_dir / f"shard-{shard:05d}.keys", "wb") as fkeys, \
            atomic_open(work_dir / f"shard-{shard:05d}.sig", "wb") as fsig:
        raw, text_out = open_jsonl_out(fdocs, "gzip")
        for batch in _batches(read_file(Path(path), errors, cfg.input.text_field), cfg.execution.batch_size):
            docs_read += len(batch)
            batch = apply_doc_stages(batch, cfg, stats, hist, decontaminator)
            kept += len(batch)
            for d in batch:
                text_out.write(json.dumps(d, ensure_ascii=False) + "\n")
                fkeys.write(dedup_key(d["text"]))
            if cfg.minhash.enabled and batch:
                fsig.write(signatures([d["text"] for d in batch], cfg.minhash).tobytes())
        text_out.flush()
        text_out.detach()
        raw.close()
    # Removals are few next to the corpus (and small records), so they are kept for the whole shard.
    with atomic_open(work_dir / f"shard-{shard:05d}.removed.jsonl", "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in removal_log)
    result = {"shard": shard, "input": path, "docs_read": docs_read, "docs_kept": kept,
              "seconds": time.perf_counter() - start, "input_errors": errors.to_dict(),
              "stages": {k: v.to_dict() for k, v in stats.items()}, "histograms": hist}
    atomic_write_json(stats_path, result)
    return result


def write_shard(shard: int, work: str, out: str, compression: str, removed: dict[int, tuple[str, str]],
                fmt: str = "jsonl") -> int:
    """Phase C for one shard: copy the survivors of phases A and B to part-NNNNN (.jsonl.gz, .jsonl or,
    with fmt = "parquet", .parquet), and every removal ({id, source, reason[, duplicate_of]}) to
    removed/part-NNNNN.jsonl. Returns documents written (-1 when an earlier run already wrote this
    shard)."""
    if fmt not in ("jsonl", "parquet"):
        raise LLMLabError(f"output.format must be \"jsonl\" or \"parquet\", not {fmt!r}")
    suffix = ".parquet" if fmt == "parquet" else ".jsonl.gz" if compression == "gzip" else ".jsonl"
    target = Path(out) / f"part-{shard:05d}{suffix}"
    if target.is_file():
        return -1
    n = 0
    docs_path = Path(work) / f"shard-{shard:05d}.jsonl.gz"
    log_lines = (Path(work) / f"shard-{shard:05d}.removed.jsonl").read_text(encoding="utf-8").splitlines()
    # Parquet needs its columns up front: one extra streaming pass over the survivors finds them.
    schema = parquet_schema(d for i, d in enumerate(_read_jsonl(docs_path)) if i not in removed) \
        if fmt == "parquet" else None
    # The part file is the shard's "done" marker, so it must be replaced last: nested context
    # managers exit inner-first, hence the removal log is the inner one.
    with atomic_open(target, "wb") as f, atomic_open(Path(out) / "removed" / f"part-{shard:05d}.jsonl", "w") as flog:
        flog.writelines(line + "\n" for line in log_lines)
        part = ParquetPart(f, *schema) if schema is not None else JsonlPart(f, compression)
        for i, d in enumerate(_read_jsonl(docs_path)):
            if i in removed:
                reason, dup_of = removed[i]
                flog.write(json.dumps({"id": d["id"], "source": d["source"], "reason": reason,
                                       "duplicate_of": dup_of}, ensure_ascii=False) + "\n")
            else:
                part.write(d)
                n += 1
        part.close()
    return n


def global_dedup(cfg: PipelineConfig, work_dir: Path, counts: list[int]) -> dict:
    """Phase B: exact then near dedup over all shards. Returns its stats (also saved)."""
    stats_path = work_dir / "dedup.stats.json"
    if stats_path.is_file():
        saved = json.loads(stats_path.read_text(encoding="utf-8"))
        if saved.get("counts") == counts:
            return saved
    start = time.perf_counter()
    total = sum(counts)
    keys: list[bytes] = []
    for s, c in enumerate(counts):
        data = (work_dir / f"shard-{s:05d}.keys").read_bytes()
        keys += [data[i * KEY_BYTES:(i + 1) * KEY_BYTES] for i in range(c)]
    reason = np.zeros(total, dtype=np.uint8)   # 0 kept, 1 exact duplicate, 2 near duplicate
    dup_of = np.arange(total, dtype=np.int64)
    exact = {"docs_in": total, "docs_out": total, "modified": 0, "removed": {}, "details": {}, "examples": {}}
    if cfg.exact_dedup.enabled and total:
        first = np.array(exact_duplicates(keys), dtype=np.int64)
        reason[first != np.arange(total)] = 1
        dup_of = first
        exact["docs_out"] = int((reason == 0).sum())
        exact["removed"] = {"exact_duplicate": int((reason == 1).sum())} if (reason == 1).any() else {}
    near = {"docs_in": int((reason == 0).sum()), "docs_out": int((reason == 0).sum()), "modified": 0,
            "removed": {}, "details": {}, "examples": {}}
    if cfg.minhash.enabled and total:
        sigs = np.concatenate([np.fromfile(work_dir / f"shard-{s:05d}.sig", dtype=np.uint32)
                               for s in range(len(counts))]).reshape(total, cfg.minhash.num_perm)
        alive = np.nonzero(reason == 0)[0]

        def shingles(local: np.ndarray) -> dict[int, np.ndarray]:
            # Only documents in candidate pairs, re-read from the work shards; their shingle
            # hashes (not their texts) are held for the exact-Jaccard check.
            position = {int(g): int(i) for i, g in zip(local, alive[local])}
            return {position[g]: shingle_hashes(d["text"], cfg.minhash.shingle_size)
                    for g, d in _work_documents(work_dir, counts, set(position))}

        keep, roots, pairs = near_duplicates(sigs[alive], cfg.minhash, shingles)
        reason[alive[~keep]] = 2
        dup_of[alive] = alive[roots]
        near["docs_out"] = int(keep.sum())
        near["removed"] = {"near_duplicate": int((~keep).sum())} if (~keep).any() else {}
        near["details"] = {"verified_pairs": int(len(pairs)), "clusters_with_duplicates": int(len(set(roots[~keep])))}
    atomic_save(work_dir / "dedup.npz", lambda f: np.savez(f, reason=reason, dup_of=dup_of))
    result = {"counts": counts, "seconds": time.perf_counter() - start,
              "stages": {"exact_dedup": exact, "minhash": near}}
    atomic_write_json(stats_path, result)
    return result


def _map(engine: str, workers: int, address: str, fn: Callable, arg_lists: list[tuple], desc: str) -> list:
    """Run fn(*args) for each args, results in input order, with a progress bar."""
    results: list = [None] * len(arg_lists)
    bar = progress(total=len(arg_lists), desc=desc, unit="shard")
    if engine == "dask":
        try:
            from dask.distributed import Client, LocalCluster, as_completed as dask_completed
        except ImportError:
            raise LLMLabError("execution.engine = \"dask\" needs dask.distributed: pip install 'llmlab[dask]' "
                              "(or pip install distributed)") from None
        cluster = None if address else LocalCluster(n_workers=max(1, workers), threads_per_worker=1,
                                                    processes=True, dashboard_address=None)
        with Client(address or cluster) as client:
            futures = [client.submit(fn, *args, pure=False) for args in arg_lists]
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in dask_completed(futures):
                results[index[fut.key]] = fut.result()
                bar.update(1)
        if cluster is not None:
            cluster.close()
    elif workers <= 1 or len(arg_lists) <= 1:
        for i, args in enumerate(arg_lists):
            results[i] = fn(*args)
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, *args): i for i, args in enumerate(arg_lists)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()
    return results


def _work_documents(work_dir: Path, counts: list[int], need: set[int]) -> Iterator[tuple[int, dict]]:
    """(global index, document) for the `need`ed documents of the phase-A work shards, in one
    streaming pass that skips shards holding none of them."""
    start = 0
    for s, c in enumerate(counts):
        if any(start <= j < start + c for j in need):
            for i, d in enumerate(_read_jsonl(work_dir / f"shard-{s:05d}.jsonl.gz")):
                if start + i in need:
                    yield start + i, d
        start += c


def _dedup_removals(work_dir: Path, counts: list[int]) -> list[dict[int, tuple[str, str]]]:
    """Per shard: {index in shard: (reason, id of the kept duplicate)} from phase B."""
    dedup = np.load(work_dir / "dedup.npz")
    reason, dup_of = dedup["reason"], dedup["dup_of"]
    hit = np.nonzero(reason)[0]
    if not hit.size:
        return [{} for _ in counts]
    # ids of the documents that removed ones duplicate: read them from the work shards once
    ids = {g: d["id"] for g, d in _work_documents(work_dir, counts, set(dup_of[hit].tolist()))}
    names = {1: "exact_duplicate", 2: "near_duplicate"}
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out: list[dict[int, tuple[str, str]]] = [{} for _ in counts]
    shard_of = np.searchsorted(offsets, hit, side="right") - 1
    for g, s in zip(hit.tolist(), shard_of.tolist()):
        out[s][g - int(offsets[s])] = (names[int(reason[g])], ids[int(dup_of[g])])
    return out


def _file_fingerprint(path: Path) -> dict:
    """Name, size and BLAKE2b of the bytes of one input file, for the resume check.

    A hash of the content, not size + mtime: an edit that keeps the size, a copy that keeps the
    mtime (cp -p, rsync -t, unpacking an archive) or a file restored from a backup would all pass
    a metadata check, and a resumed run would then mix shards of the old content with the new.
    Hashing reads each input once more, at ~1 GB/s, while the filters get through well under
    1 MB/s per core (benchmarks/pipeline.py), so it costs far less than 1% of a run."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "blake2b": h.hexdigest()}


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) the pipeline; returns the combined stats also written to OUT/stats.json."""
    start = time.perf_counter()
    out = Path(cfg.output.dir)
    work_dir = out / WORK
    work_dir.mkdir(parents=True, exist_ok=True)
    inputs = list_inputs(cfg.input.paths)
    fingerprint = {"config": cfg.fingerprint(), "inputs": [_file_fingerprint(p) for p in inputs]}
    fp_path = work_dir / "fingerprint.json"
    if fp_path.is_file() and json.loads(fp_path.read_text(encoding="utf-8")) != fingerprint:
        raise LLMLabError(f"{out} holds a run with a different config, input list or input file content; "
                          "resuming it would mix results. Use a new --out directory, or delete it to start over")
    atomic_write_json(fp_path, fingerprint)
    ex = cfg.execution
    cfg_dict = cfg.to_dict()
    shard_stats = _map(ex.engine, ex.workers, ex.dask_address, filter_shard,
                       [(cfg_dict, i, str(p), str(work_dir)) for i, p in enumerate(inputs)], "filter")
    counts = [s["docs_kept"] for s in shard_stats]
    dedup = global_dedup(cfg, work_dir, counts)
    removed = _dedup_removals(work_dir, counts)
    written = _map(ex.engine, ex.workers, ex.dask_address, write_shard,
                   [(i, str(work_dir), str(out), cfg.output.compression, removed[i], cfg.output.format)
                    for i in range(len(inputs))],
                   "write")
    return _combine_stats(cfg, out, shard_stats, dedup, written, time.perf_counter() - start)


def _combine_stats(cfg: PipelineConfig, out: Path, shard_stats: list[dict], dedup: dict, written: list[int],
                   seconds: float) -> dict:
    stages = {name: StageStats() for name in DOC_STAGES}
    hist = empty_histograms()
    errors: dict[str, int] = {}
    error_examples: list[dict] = []
    for s in shard_stats:
        for name, st in s["stages"].items():
            stages[name].merge(st)
        merge_histograms(hist, s["histograms"])
        for k, v in s["input_errors"]["counts"].items():
            errors[k] = errors.get(k, 0) + v
        error_examples += s["input_errors"]["examples"][:max(0, 20 - len(error_examples))]
    all_stages = {k: v.to_dict() for k, v in stages.items()} | dedup["stages"]
    docs_in = sum(s["docs_read"] for s in shard_stats)
    docs_out = dedup["stages"]["minhash"]["docs_out"]
    stats = {"docs_in": docs_in, "docs_out": docs_out, "shards": len(shard_stats),
             "seconds": round(seconds, 3), "cpu_seconds_filter": round(sum(s["seconds"] for s in shard_stats), 3),
             "input_errors": {"counts": dict(sorted(errors.items())), "examples": error_examples},
             "stages": all_stages, "histograms": hist, "config": cfg.to_dict()}
    for name, st in all_stages.items():
        atomic_write_json(out / "stats" / f"{name}.json", st)
    atomic_write_json(out / "stats.json", stats)
    return stats
