"""What a relay adds to each token: latency, time to first token, CPU.

Per-token latency = when the client received the k-th word minus when the demo
provider sent its k-th token (`token_times`); both are `time.monotonic()` on this
host. CPU per token = the relay worker's utime + stime over the run (from
/proc/<pid>/stat) divided by the tokens it relayed.
"""

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, servers
from bench.client import content_body, openai_body
from bench.stop_latency import percentile
from flask_stopwire.demo import script as demo_script

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """Where a client POSTs a prompt, how it words the body, and the process to meter."""

    name: str
    url: str
    path: str
    body: Callable[[str], dict]
    pid: int | None = None  # the relay's worker; None when the client reads the demo itself


def stopwire_target(
    name: str, gunicorn: servers.Gunicorn, body: Callable[[str], dict], path: str = "/api/chat"
) -> Target:
    """Stopwire's /api/chat (or `path`), metered on its one worker."""
    return Target(name, gunicorn.url, path, body, only_child(gunicorn.process.pid))


def baseline_target(gunicorn: servers.Gunicorn) -> Target:
    """The plain relay, metered on its one worker."""
    return Target("baseline", gunicorn.url, "/chat", content_body, only_child(gunicorn.process.pid))


def direct_target(demo: servers.Demo) -> Target:
    """No proxy: the client reads the provider, the floor every relay is compared with."""
    return Target("no proxy", demo.base, "/v1/chat/completions", openai_body)


def only_child(pid: int, timeout: float = 10.0) -> int:
    """The single worker of a one-worker gunicorn master (which listens before it forks)."""
    deadline = time.monotonic() + timeout
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) == 1:
            return int(children[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one worker under {pid}, found {children}")
        time.sleep(0.05)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far: where it runs Python, where the kernel."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Load:
    """One run of `streams` concurrent streams through one target."""

    target: str
    streams: int
    gap_s: float
    latencies_ms: list[float]
    ttft_ms: list[float]
    tokens: int
    seconds: float
    cpu_s: float | None
    incomplete: int
    mismatched: int = 0  # streams whose text differs from the provider's, character for character
    user_cpu_s: float | None = None  # the part of cpu_s in user mode
    # The demo provider's CPU: it shares the host's cores with the relay it serves.
    provider_cpu_s: float | None = None
    # When the provider wrote each token, in seconds after the first request, in the order
    # of latencies_ms: where in a run its tokens waited.
    written_s: list[float] = field(default_factory=list)

    def stats(self) -> dict:
        """Percentiles (nearest rank), token rate and CPU per token."""
        lat, ttft = sorted(self.latencies_ms), sorted(self.ttft_ms)
        return {
            "target": self.target,
            "streams": self.streams,
            "gap_ms": self.gap_s * 1000,
            "token_p50_ms": percentile(lat, 50),
            "token_p99_ms": percentile(lat, 99),
            "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p99_ms": percentile(ttft, 99),
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else None,
            "cpu_us_per_token": _per_token_us(self.cpu_s, self.tokens),
            "user_cpu_us_per_token": _per_token_us(self.user_cpu_s, self.tokens),
            "provider_cpu_us_per_token": _per_token_us(self.provider_cpu_s, self.tokens),
            "incomplete": self.incomplete,
            "mismatched": self.mismatched,
        }


def measure(
    target: Target, demo: servers.Demo, streams: int, tokens: int, gap_s: float, stagger_s: float
) -> Load:
    """Run `streams` streams of `tokens` tokens at `gap_s` through `target`; match to the demo."""
    directive = f"[demo ttft=0.02 tokens={tokens} gap={gap_s}]"
    prompts = {f"bench-{uuid.uuid4().hex[:16]}": None for _ in range(streams)}
    bodies = {m: target.body(f"{m} {directive}") for m in prompts}
    demo.clear()
    cpu_before = cpu_times(target.pid) if target.pid else None
    provider_before = sum(cpu_times(demo.process.pid))
    timeout = 60 + tokens * gap_s * 3 + streams * stagger_s
    received = loadgen.run(target.url, target.path, bodies, timeout, stagger_s)
    cpu_after = cpu_times(target.pid) if target.pid else None
    provider_cpu = sum(cpu_times(demo.process.pid)) - provider_before
    records = {r["prompt"].split()[0]: r for r in demo.records()}
    first = min(g.sent_at for g in received)
    latencies, written, ttft, count = [], [], [], 0
    for got in received:
        pairs = list(zip(got.token_at, records[got.marker]["token_times"], strict=False))
        latencies += [(received_at - sent_at) * 1000 for received_at, sent_at in pairs]
        written += [sent_at - first for _, sent_at in pairs]
        if got.token_at:
            ttft.append((got.token_at[0] - got.sent_at) * 1000)
        count += len(got.token_at)
    last = max((g.token_at[-1] for g in received if g.token_at), default=first)
    incomplete = sum(not g.complete or len(g.token_at) != tokens for g in received)
    mismatched = sum("".join(g.texts) != provider_text(bodies[g.marker]) for g in received)
    seconds = last - first
    cpu = user_cpu = None
    if cpu_before is not None and cpu_after is not None:
        cpu = sum(cpu_after) - sum(cpu_before)
        user_cpu = cpu_after[0] - cpu_before[0]
    return Load(
        target.name,
        streams,
        gap_s,
        latencies,
        ttft,
        count,
        seconds,
        cpu,
        incomplete,
        mismatched=mismatched,
        user_cpu_s=user_cpu,
        provider_cpu_s=provider_cpu,
        written_s=written,
    )


def _per_token_us(cpu_s: float | None, tokens: int) -> float | None:
    return cpu_s / tokens * 1e6 if cpu_s is not None and tokens else None


def provider_text(body: dict) -> str:
    """What the demo provider says to this body's last user message, as one string."""
    messages = body.get("messages") or [{"role": "user", "content": body.get("content", "")}]
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    script, text = demo_script.parse(prompt, demo_script.Script())
    return "".join(demo_script.words(script, text))


def warm_up(target: Target) -> None:
    """A few streams first: imports, pools and the worker's first requests are paid here."""
    loadgen.run(target.url, target.path, {"warm": target.body("warm [demo ttft=0 tokens=3]")}, 20)
    time.sleep(0.2)
