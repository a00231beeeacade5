"""Instructions per relayed token and per chat, counted by callgrind: the CPU cost a
shared machine does not blur.

    .venv/bin/python -m bench.instructions [--streams 10] [--quick] [--base REV]

On this workplace's 2-core virtual machines the CPU time of the same load varies by up
to a factor of two between rounds (the hypervisor takes time back: the suite reports
it), so a change of a few per cent cannot be told apart in seconds. valgrind's callgrind
counts the instructions a process executes instead: the same load gives the same count
within 0.3%, whatever else the machine does.

Each relay's one worker runs under callgrind with counting off, so start-up is not
counted. After a warm-up, counting is on for `streams` chats of 50 tokens, then for as
many of 150, each token 100 ms after the last: slow enough that even at valgrind's pace
every token is its own read and its own frame, as on a worker that keeps up. The second
load's extra instructions over its extra tokens are the cost per token; what is left of
the first load, per chat, the cost per chat (the request, the provider call, the save).
The worker's periodic work (the recorder's beats, saving partial answers) falls in the
loads as it would in real ones: the longer the loads, the steadier the split, and
`--quick`'s short ones are a smoke run, not a measure.

Only user mode is counted, which is where the relays differ: the kernel's side is one
receive and one send per token for both (docs/token-path-profile.md). An instruction is
not a fixed time (a cache miss costs more than an add), so the table gives counts and
ratios, not microseconds.
"""

import argparse
import contextlib
import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import relay_cost, servers
from bench.client import content_body, messages_body, openai_body
from bench.stop_latency import machine, machine_line

SHORT, LONG = 50, 150  # tokens per chat in the two loads
GAP_S = 0.1
STREAMS = 10
STAGGER_S = 0.005


@dataclass(frozen=True)
class Count:
    """What one target's worker executed: per relayed token and per chat."""

    target: str
    per_token: float
    per_chat: float


def callgrind(out_dir: str) -> list[str]:
    """The command prefix that runs a server under callgrind, counting nothing until told."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
    ]


def control(pid: int, *args: str) -> None:
    """Tell a process under callgrind to zero, dump, or turn counting on or off."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def dumped(out_dir: str, pid: int, label: str) -> int | None:
    """The instructions in the dump of `pid` made with `label` (`callgrind_control -d`);
    None while callgrind has not written it whole."""
    for path in Path(out_dir).glob(f"callgrind.{pid}.*"):
        text = path.read_text(errors="replace")
        if re.search(rf"^desc: Trigger: dump {re.escape(label)}$", text, re.M):
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            return int(total.group(1)) if total else None
    return None


def count(
    target: relay_cost.Target, demo: servers.Demo, out_dir: str, streams: int, tokens: tuple
) -> Count:
    """Count one target's instructions over a short and a long load; split per token, chat."""
    assert target.pid is not None
    # As many chats at once as a load: the provider connections it pools are opened here.
    relay_cost.measure(target, demo, streams, 3, GAP_S, STAGGER_S)
    totals = []
    for length in tokens:
        label = f"{target.name.replace(' ', '-')}-{length}"
        control(target.pid, "--zero")
        control(target.pid, "--instr=on")
        load = relay_cost.measure(target, demo, streams, length, GAP_S, STAGGER_S)
        control(target.pid, "--dump=" + label)
        control(target.pid, "--instr=off")
        if load.incomplete or load.mismatched or load.tokens != streams * length:
            raise RuntimeError(f"{target.name}: the load did not relay every token as sent")
        totals.append(_await_dump(out_dir, target.pid, label))
    return Count(target.name, *split(totals, streams, tokens))


def split(totals: list[int], streams: int, tokens: tuple) -> tuple[float, float]:
    """Instructions per token and per chat from two loads' totals: the longer load's
    extra instructions over its extra tokens, and what the first leaves per chat."""
    short, long = tokens
    per_token = (totals[1] - totals[0]) / (streams * (long - short))
    return per_token, totals[0] / streams - short * per_token


def _await_dump(out_dir: str, pid: int, label: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (total := dumped(out_dir, pid, label)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no dump {label!r} for {pid}")
        time.sleep(0.2)
    return total


def measure(streams: int, tokens: tuple, base: str | None = None) -> list[Count]:
    """The plain relay and Stopwire's targets (`stopwire_targets`), counted; with `base`,
    a git revision, that revision's Stopwire too."""
    out_dir = tempfile.mkdtemp(prefix="stopwire-callgrind-")
    demo = servers.Demo()
    started: list[servers.Process] = [demo]
    try:
        with contextlib.ExitStack() as trees:
            baseline = servers.baseline(demo.url, under=callgrind(out_dir))
            started.append(baseline)
            targets = [
                dataclasses.replace(relay_cost.baseline_target(baseline), name="plain relay")
            ]
            sides = {"": servers.ROOT}
            if base is not None:
                sides[f" at {base}"] = trees.enter_context(servers.checkout(base))
            for suffix, tree in sides.items():
                with servers.running_from(tree):
                    # Partial answers saved every 5 s: at 100 ms a token, as many tokens
                    # apart as the suite's 1 s at 20 ms.
                    stopwire = servers.stopwire(demo.url, under=callgrind(out_dir), FLUSH_S="5")
                started.append(stopwire)
                targets += stopwire_targets(stopwire, suffix)
            return [count(target, demo, out_dir, streams, tokens) for target in targets]
    finally:
        for process in reversed(started):
            process.close()
        shutil.rmtree(out_dir, ignore_errors=True)


def stopwire_targets(stopwire: servers.Gunicorn, suffix: str) -> list[relay_cost.Target]:
    """Stopwire's /v1, and its /api/chat with the history in the request (nothing saved)
    and as a new conversation (saved), on one worker."""
    return [
        relay_cost.stopwire_target(
            f"Stopwire /v1{suffix}", stopwire, openai_body, "/v1/chat/completions"
        ),
        relay_cost.stopwire_target(f"/api/chat, not saved{suffix}", stopwire, messages_body),
        relay_cost.stopwire_target(f"/api/chat, saved{suffix}", stopwire, content_body),
    ]


def table(counts: list[Count]) -> str:
    """The counts side by side, with each relay's ratio to the plain relay."""
    base = counts[0]
    rows = [
        ["instructions (callgrind, user mode)", *(c.target for c in counts)],
        ["---", *("--:" for _ in counts)],
        ["per relayed token", *(f"{c.per_token / 1e3:,.1f} k" for c in counts)],
        ["… against the plain relay", *(f"{c.per_token / base.per_token:.2f}x" for c in counts)],
        ["per chat", *(f"{c.per_chat / 1e6:,.2f} M" for c in counts)],
    ]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> None:
    """Count and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--streams", type=int, default=STREAMS, help=f"chats a load ({STREAMS})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 and 45 tokens")
    parser.add_argument("--base", help="also count Stopwire at this git revision")
    args = parser.parse_args(argv)
    tokens = (5, 45) if args.quick else (SHORT, LONG)
    began = time.monotonic()
    counts = measure(args.streams, tokens, args.base)
    print(f"# {args.streams} chats of {tokens[0]}, then of {tokens[1]} tokens, ", end="")
    print(f"{GAP_S * 1000:.0f} ms apart, one worker each, under callgrind\n")
    print(f"Machine: {machine_line(machine())}\n")
    print(table(counts))
    print(f"\nRun took {time.monotonic() - began:.0f} s.")


if __name__ == "__main__":
    main()
