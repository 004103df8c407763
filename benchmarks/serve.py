"""Serving under load, on loopback: llmlab serve (continuous batching, one at a time, prefix cache on and
off) against `transformers serve --continuous-batching` and llama.cpp's `llama-server --parallel`.

    python benchmarks/serve.py                                   # every row (about 30 min on 2 cores)
    python benchmarks/serve.py --subjects ours,serial --clients 1,16 --output-tokens 32   # a quick look
    python benchmarks/serve.py --subjects prefix                 # prefix caching with a 400-token system prompt
    python benchmarks/serve.py --step-sweep                      # decode step time vs batch size, no HTTP
    python benchmarks/serve.py --json out.json --plot docs/img/08-serving.png

Each row starts the server as its own process on 127.0.0.1 (a free port), runs C clients that each
send chat requests back to back (streaming, greedy, `max_tokens` output tokens, EOS ignored where the
server allows it) until the row's requests are done, then stops the server. Requests per row:
max(4, C) for C clients; every row is also bounded by --row-timeout seconds. Figures (vLLM's names):
  output tok/s   completion tokens of all requests / the row's wall time
  TTFT           request sent -> first content chunk          (mean, p50, p95)
  ITL            gap between consecutive content chunks       (p50, p95)
  TPOT           (e2e - TTFT) / (tokens - 1), per request      (mean)
  e2e            request sent -> last chunk                    (mean, p50, p95)
  peak RSS       the server process's VmHWM, reset before each row (/proc/PID/clear_refs)

Subjects (--subjects):
  ours      llmlab serve --model M (float32), continuous batching, --max-batch 64
  serial    the same with --max-batch 1: one request at a time
  native    ours on the GGUF's own Q4_1 blocks (--native-gguf): llama.cpp's weight format, our kernels
  prefix    16 clients sharing a ~400-token system prompt, prefix cache on vs off
  hf        transformers serve --continuous-batching --device cpu on llmlab's HF export of M
  hf-compile  the same rows, then again with transformers serve's --compile
            (`llmlab export M --to hf`), float32, --cb-num-blocks bounded (CPU default: 60% of RAM)
  llamacpp  llama-server -m M.gguf --parallel C (its own Q4_1 blocks, so not the same arithmetic as
            our float32 rows: see the note printed with it). `llama-server` is found on PATH or at
            $LLAMA_SERVER; llama-cpp-python does not ship it. Build it from its vendored llama.cpp:
            cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON && cmake --build build --target llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _machine import describe

PROMPTS = [
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step, for a curious child.",
    "Describe a walk through a busy market in a city you imagine.",
    "Write a letter from a cat to the dog who lives next door.",
    "What are the main causes of the seasons on Earth? Explain in detail.",
    "Tell me about the history of the printing press and why it mattered.",
    "Write a poem about the sea at night, then explain its imagery.",
    "Give ten tips for learning to play the guitar, with a sentence on each.",
    "Describe the life cycle of a star, from cloud to remnant.",
    "Write a recipe for a vegetable soup and explain each step.",
    "Explain what a computer does when you press a key, from switch to screen.",
    "Write a dialogue between two friends planning a trip to the mountains.",
    "Why do leaves change colour in autumn? Explain the chemistry simply.",
    "Describe how bees make honey and why they are important.",
    "Write a short fairy tale about a clever fox and a proud crow.",
    "Explain the rules of chess to someone who has never played.",
]
SYSTEM_400 = ("You are a patient, careful assistant for a public library. " * 4 + "Follow these rules. " +
              " ".join(f"Rule {i}: answer kindly, cite the shelf number when you mention a book, never invent "
                       f"opening hours, and suggest one related title." for i in range(1, 15)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    model_name: str
    extra_body: dict = field(default_factory=dict)   # what the server accepts beyond OpenAI's fields
    health: str = "/health"
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, timeout: float = 600) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"serve-{self.name}-", suffix=".log")[1])
        self.process = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        import httpx
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}); log: {self.log}\n"
                                   + self.log.read_text()[-2000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.health}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s; log: {self.log}")

    def reset_peak_rss(self) -> None:
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            pass   # older kernels: VmHWM then is the peak since start

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def ours(model: str, dtype: str, max_batch: int, num_blocks: int, prefix_cache: bool = True,
         name: str = "ours", extra: list[str] | None = None) -> Server:
    port = free_port()
    command = [str(Path(sys.executable).with_name("llmlab")), "serve", "--model", model, "--dtype", dtype, "--port", str(port),
               "--max-batch", str(max_batch), "--num-blocks", str(num_blocks), "--log-level", "warning",
               "--max-queue", "1024", "--request-timeout-s", "3600"] + ([] if prefix_cache else ["--no-prefix-cache"]) + (extra or [])
    return Server(name, command, port, "smollm2" if model == "smollm2" else Path(model).stem, {"ignore_eos": True})


def transformers_server(hf_dir: Path, num_blocks: int, compile: bool = False) -> Server:
    port = free_port()
    exe = str(Path(sys.executable).with_name("transformers"))
    return Server("hf", [exe, "serve", "--continuous-batching", "--device", "cpu", "--dtype", "float32"]
                  + (["--compile"] if compile else [])
                  + ["--cb-num-blocks", str(num_blocks), "--cb-block-size", "16", "--cb-max-batch-tokens", "256",
                     "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", str(hf_dir)],
                  port, str(hf_dir))


def llamacpp_server(gguf: Path, parallel: int, threads: int, context_per_slot: int) -> Server | None:
    exe = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if not exe:
        return None
    port = free_port()
    return Server("llamacpp", [exe, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                               "--parallel", str(parallel), "-c", str(parallel * context_per_slot),
                               "-t", str(threads), "--cont-batching", "--no-webui"],
                  port, gguf.stem, {"ignore_eos": True})


# ---------------------------------------------------------------------------- load


@dataclass
class Result:
    ttft: float = float("nan")
    chunk_times: list[float] = field(default_factory=list)
    e2e: float = float("nan")
    tokens: int = 0
    error: str = ""


async def one_request(client, server: Server, messages: list[dict], max_tokens: int) -> Result:
    body = {"model": server.model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **server.extra_body}
    result, t0, chunks = Result(), time.perf_counter(), 0
    try:
        async with client.stream("POST", f"http://127.0.0.1:{server.port}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):            # the server ended the stream early (timeout, shutdown)
                    result.error = f"stream error: {chunk['error'].get('message', '')[:120]}"
                    return result
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter() - t0
                        if chunks == 0:
                            result.ttft = now
                        result.chunk_times.append(now)
                        chunks += 1
        result.e2e = time.perf_counter() - t0
        result.tokens = result.tokens or chunks
    except Exception as e:   # a failed request is a row's result, not the benchmark's end
        result.error = f"{type(e).__name__}: {e}"
    return result


async def run_load(server: Server, clients: int, requests: int, max_tokens: int, system: str | None,
                   timeout: float) -> tuple[list[Result], float]:
    import httpx

    queue = list(range(requests))
    results: list[Result] = []

    async def client_loop(client) -> None:
        while queue:
            i = queue.pop(0)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            results.append(await one_request(client, server, messages, max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(clients))), timeout)
        except asyncio.TimeoutError:
            results += [Result(error="row timeout")] * len(queue)
        return results, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summarize(name: str, clients: int, results: list[Result], wall: float, rss: float) -> dict:
    ok = [r for r in results if not r.error]
    itl = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tpot = [(r.e2e - r.ttft) / (r.tokens - 1) for r in ok if r.tokens > 1]
    ttft, e2e = [r.ttft for r in ok], [r.e2e for r in ok]
    tokens = sum(r.tokens for r in ok)
    errors = sorted({r.error for r in results if r.error})
    return {"subject": name, "clients": clients, "requests": len(results), "failed": len(results) - len(ok),
            "output_tok_s": tokens / wall, "req_s": len(ok) / wall, "tokens": tokens, "wall_s": wall,
            "ttft_mean": statistics.fmean(ttft) if ttft else float("nan"), "ttft_p50": percentile(ttft, 50),
            "ttft_p95": percentile(ttft, 95), "itl_p50": percentile(itl, 50), "itl_p95": percentile(itl, 95),
            "tpot_mean": statistics.fmean(tpot) if tpot else float("nan"),
            "e2e_mean": statistics.fmean(e2e) if e2e else float("nan"), "e2e_p50": percentile(e2e, 50),
            "e2e_p95": percentile(e2e, 95), "peak_rss_mib": rss, "errors": errors[:3]}


def measure(server: Server, clients_list: list[int], max_tokens: int, system: str | None, timeout: float,
            label: str | None = None) -> list[dict]:
    rows = []
    server.start()
    try:
        # One warm-up request: first-call costs (lazy imports, allocator growth) are not a row's.
        asyncio.run(run_load(server, 1, 1, 8, system, timeout))
        for clients in clients_list:
            server.reset_peak_rss()
            results, wall = asyncio.run(run_load(server, clients, max(4, clients), max_tokens, system, timeout))
            row = summarize(label or server.name, clients, results, wall, server.peak_rss_mib())
            rows.append(row)
            print_row(row, flush=True)
    finally:
        server.stop()
    return rows


HEADER = (f"{'subject':<22}{'C':>4}{'req':>5}{'fail':>5}{'out tok/s':>10}{'req/s':>7}{'TTFT mean':>10}{'p50':>7}"
          f"{'p95':>7}{'ITL p50':>8}{'p95':>7}{'TPOT':>7}{'e2e mean':>9}{'p95':>7}{'RSS MiB':>8}")


def print_row(r: dict, flush: bool = False) -> None:
    print(f"{r['subject']:<22}{r['clients']:>4}{r['requests']:>5}{r['failed']:>5}{r['output_tok_s']:>10.1f}"
          f"{r['req_s']:>7.2f}{r['ttft_mean']:>10.2f}{r['ttft_p50']:>7.2f}{r['ttft_p95']:>7.2f}"
          f"{r['itl_p50'] * 1e3:>8.0f}{r['itl_p95'] * 1e3:>7.0f}{r['tpot_mean'] * 1e3:>7.0f}{r['e2e_mean']:>9.1f}"
          f"{r['e2e_p95']:>7.1f}{r['peak_rss_mib']:>8.0f}" + (f"   errors: {r['errors']}" if r["errors"] else ""),
          flush=flush)


# ---------------------------------------------------------------------------- decode step vs batch


def step_sweep(model: str, dtype: str, batches: list[int], context: int) -> list[dict]:
    """Time of one decode step of the ContinuousEngine at each batch size, every sequence holding
    `context` tokens: why batching multiplies throughput while decode is memory-bound."""
    from llmlab.infer import Engine, SamplingConfig
    from llmlab.infer.continuous import ContinuousEngine
    from llmlab.infer.scheduler import SchedulerConfig

    engine = Engine.load(model, dtype=dtype)
    rows = []
    for batch in batches:
        ce = ContinuousEngine.from_engine(engine, SchedulerConfig(max_batch=batch, max_step_tokens=batch * context,
                                                                  num_blocks=batch * (context // 16 + 4)))
        for i in range(batch):
            ce.submit(list(range(100 + i, 100 + i + context)), SamplingConfig(max_new_tokens=12, temperature=0,
                                                                            ignore_eos=True))
        ce.step()                                     # the prefill of all of them
        times = []
        for _ in range(8):
            t0 = time.perf_counter()
            ce.step()
            times.append(time.perf_counter() - t0)
        step = statistics.median(times[2:])
        rows.append({"batch": batch, "step_ms": step * 1e3, "tok_s": batch / step})
        print(f"{batch:>6}{step * 1e3:>10.1f}{batch / step:>10.1f}{rows[-1]['tok_s'] / rows[0]['tok_s']:>9.2f}x",
              flush=True)
        del ce
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for subject in dict.fromkeys(r["subject"] for r in rows):
        mine = [r for r in rows if r["subject"] == subject]
        if len(mine) < 2:
            continue
        a.plot([r["clients"] for r in mine], [r["output_tok_s"] for r in mine], "o-", label=subject)
        b.plot([r["clients"] for r in mine], [r["ttft_p95"] for r in mine], "o-", label=subject)
    ticks = sorted({r["clients"] for r in rows})
    for ax, title in ((a, "output tokens/s"), (b, "TTFT p95 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    b.set_yscale("log")
    a.legend()
    fig.suptitle("Serving SmolLM2-135M on 2 CPU cores (benchmarks/serve.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="any llmlab --model source (the GGUF rows need smollm2 "
                                                            "or a .gguf)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--subjects", default="ours,serial,prefix,hf,llamacpp")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrent clients per row")
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=64, help="ours: sequences per step")
    parser.add_argument("--num-blocks", type=int, default=1024, help="ours and hf: KV blocks of 16 tokens (16k tokens)")
    parser.add_argument("--row-timeout", type=float, default=900)
    parser.add_argument("--threads", type=int, default=2, help="llama-server threads")
    parser.add_argument("--step-sweep", action="store_true", help="only the decode-step-vs-batch table")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--plot", help="write the throughput/TTFT plot here (PNG)")
    parser.add_argument("--plot-from", nargs="+", metavar="JSON", help="only plot (to --plot) the rows of earlier "
                        "--json files; a later file's row replaces an earlier one's of the same subject and clients")
    args = parser.parse_args()
    if args.plot_from:
        merged: dict = {}
        for path in args.plot_from:
            for row in json.loads(Path(path).read_text())["rows"]:
                merged[(row["subject"], row["clients"])] = row
        plot(list(merged.values()), args.plot or "serve.png")
        return
    clients = [int(c) for c in args.clients.split(",")]
    subjects = args.subjects.split(",")
    print(f"# serving benchmark: {args.model} ({args.dtype}), {args.output_tokens} output tokens per request, "
          f"greedy, loopback\n# {describe()}")
    rows: list[dict] = []
    if args.step_sweep:
        print(f"{'batch':>6}{'step ms':>10}{'tok/s':>10}{'vs 1':>10}")
        rows = step_sweep(args.model, args.dtype, clients, 200)
    else:
        print(HEADER)
        if "ours" in subjects:
            rows += measure(ours(args.model, args.dtype, args.max_batch, args.num_blocks), clients,
                            args.output_tokens, None, args.row_timeout, f"ours (max-batch {args.max_batch})")
        if "native" in subjects:
            rows += measure(ours(args.model, args.dtype, args.max_batch, args.num_blocks, extra=["--native-gguf"]),
                            clients, args.output_tokens, None, args.row_timeout, "ours --native-gguf (Q4_1)")
        if "serial" in subjects:
            rows += measure(ours(args.model, args.dtype, 1, args.num_blocks, name="serial"), clients,
                            args.output_tokens, None, args.row_timeout, "ours (max-batch 1)")
        if "prefix" in subjects:
            for on in (False, True):
                rows += measure(ours(args.model, args.dtype, args.max_batch, args.num_blocks, prefix_cache=on),
                                [16], args.output_tokens, SYSTEM_400, args.row_timeout,
                                f"ours 400-tok system, {'cache' if on else 'no cache'}")
        if "hf" in subjects or "hf-compile" in subjects:
            hf_dir = Path(tempfile.gettempdir()) / f"llmlab-bench-serve-hf-{Path(args.model).stem}"
            if not (hf_dir / "config.json").is_file():
                subprocess.run([str(Path(sys.executable).with_name("llmlab")), "export", args.model, str(hf_dir), "--to", "hf"], check=True, stdout=subprocess.DEVNULL)
            for compiled in (False, True) if "hf-compile" in subjects else (False,):
                rows += measure(transformers_server(hf_dir, args.num_blocks, compiled), clients, args.output_tokens,
                                None, args.row_timeout, "transformers serve --cb" + (" --compile" if compiled else ""))
        if "llamacpp" in subjects:
            from llmlab.model.source import resolve_source
            gguf = resolve_source(args.model).path
            for c in clients:   # its slots are fixed at start: one server per client count
                server = llamacpp_server(gguf, c, args.threads, args.output_tokens + 512)
                if server is None:
                    print("llamacpp: no llama-server on PATH or $LLAMA_SERVER (see this file's docstring); skipped")
                    break
                rows += measure(server, [c], args.output_tokens, None, args.row_timeout,
                                "llama-server Q4_1 (own)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), "args": vars(args), "rows": rows}, indent=1))
    if args.plot and not args.step_sweep:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
