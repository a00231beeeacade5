"""The highest token rate one worker relays with p99 added latency ≤ 20 ms (issue #6, d).

    .venv/bin/python -m bench.capacity

More and more concurrent streams at 20 ms per token go through each relay, next to
the same load read from the provider directly; the rate of the largest load whose
p99 per-token latency stays within 20 ms of the direct read's is the answer.
"""

from dataclasses import dataclass

from bench import client, relay_cost, servers

BUDGET_MS = 20.0
GAP_S = 0.02
TOKENS = 50
STEPS = (25, 50, 75, 100, 150, 200, 300)  # 75: a slow day's capacity falls between 50 and 100
STAGGER_S = 0.005  # between connects, as in the suite's relay-cost loads


@dataclass
class Step:
    """One load through one relay, against the direct read at the same load."""

    target: str
    streams: int
    tokens_per_s: float
    added_p99_ms: float

    @property
    def within(self) -> bool:
        return self.added_p99_ms <= BUDGET_MS


def search(
    relays: list[relay_cost.Target], direct: relay_cost.Target, demo: servers.Demo, steps=STEPS
) -> list[Step]:
    """Every step for every relay until it goes over budget (the step over is kept)."""
    found: list[Step] = []
    going = {relay.name for relay in relays}
    for streams in steps:
        if not going:
            break
        floor = relay_cost.measure(direct, demo, streams, TOKENS, GAP_S, STAGGER_S).stats()
        for relay in relays:
            if relay.name not in going:
                continue
            stats = relay_cost.measure(relay, demo, streams, TOKENS, GAP_S, STAGGER_S).stats()
            step = Step(
                relay.name,
                streams,
                stats["tokens_per_s"],
                stats["token_p99_ms"] - floor["token_p99_ms"],
            )
            found.append(step)
            if not step.within:
                going.discard(relay.name)
    return found


def best(steps: list[Step], target: str) -> Step | None:
    """The fastest step of `target` that stayed within budget."""
    fits = [s for s in steps if s.target == target and s.within]
    return max(fits, key=lambda s: s.tokens_per_s, default=None)


def table(steps: list[Step]) -> str:
    """The steps, then each relay's answer."""
    lines = [
        "| relay | streams (50 tokens, 20 ms apart) | tokens/s | added p99 ms | within 20 ms |",
        "|---|--:|--:|--:|---|",
    ]
    lines += [
        f"| {s.target} | {s.streams} | {s.tokens_per_s:.0f} | {s.added_p99_ms:+.2f} | "
        f"{'yes' if s.within else 'no'} |"
        for s in steps
    ]
    lines.append("")
    for name in dict.fromkeys(s.target for s in steps):
        top = best(steps, name)
        answer = f"{top.tokens_per_s:.0f} tokens/s ({top.streams} streams)" if top else "none"
        lines.append(f"- {name}: highest rate within {BUDGET_MS:.0f} ms added p99: {answer}")
    return "\n".join(lines)


def main() -> None:
    demo = servers.Demo()
    started: list[servers.Process] = [demo]
    try:
        stopwire = servers.stopwire(demo.url, WORKER_CONNECTIONS="2000")
        started.append(stopwire)
        baseline = servers.baseline(demo.url, worker_connections=2000)
        started.append(baseline)
        relays = [
            relay_cost.stopwire_target("Stopwire", stopwire, client.messages_body),
            relay_cost.baseline_target(baseline),
        ]
        direct = relay_cost.direct_target(demo)
        for target in [direct, *relays]:
            relay_cost.warm_up(target)
        print(table(search(relays, direct, demo)))
    finally:
        for process in reversed(started):
            process.close()


if __name__ == "__main__":
    main()
