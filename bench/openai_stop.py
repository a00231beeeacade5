"""Stop latency through the OpenAI-compatible endpoint, next to /api/chat's (issue #5).

    .venv/bin/python -m bench.openai_stop [--trials N]

Each trial asks the demo provider for a paced answer, leaves in one of the ways an
OpenAI client leaves (closes a stream after 5 chunks, gives up on a non-streamed
answer, leaves before the first token), and reads from the provider's own record
when its connection closed. Same method and units as bench/stop_latency.py.
"""

import argparse
import os
import time

from bench import servers
from bench.client import Stream
from bench.stop_latency import (
    Row,
    load_line,
    machine,
    machine_line,
    new_marker,
    openai_token,
    sample,
    stopwire_token,
    table,
    wait_ended,
)

PACED = "[demo ttft=0.02 tokens=400 gap=0.02]"
SLOW_START = "[demo ttft=5 tokens=50 gap=0.02]"
MODEL = "stopwire-demo"


def chat(content: str, stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream}


def api_chat_after_5(url: str, marker: str) -> float:
    stream = Stream(url, "/api/chat", {"content": f"{marker} {PACED}"})
    stream.read_frames(5, stopwire_token)
    return stream.close("fin")


def api_chat_before_first_token(url: str, marker: str) -> float:
    stream = Stream(url, "/api/chat", {"content": f"{marker} {SLOW_START}"})
    stream.read_meta()
    time.sleep(0.3)
    return stream.close("fin")


def openai_stream_after_5(url: str, marker: str) -> float:
    stream = Stream(url, "/v1/chat/completions", chat(f"{marker} {PACED}", True))
    stream.read_frames(5, openai_token)
    return stream.close("fin")


def openai_whole_disconnect(url: str, marker: str) -> float:
    stream = Stream(url, "/v1/chat/completions", chat(f"{marker} {PACED}", False))
    time.sleep(0.3)  # the answer takes 8 s; the client gives up after 0.3 s
    return stream.close("fin")


def openai_before_first_token(url: str, marker: str) -> float:
    stream = Stream(url, "/v1/chat/completions", chat(f"{marker} {SLOW_START}", True))
    time.sleep(0.3)  # no byte is sent before the first token (or heartbeat)
    return stream.close("fin")


SCENARIOS = [
    ("/api/chat", "close after 5 tokens", api_chat_after_5),
    ("/v1/chat/completions stream", "close after 5 chunks", openai_stream_after_5),
    ("/v1/chat/completions whole", "client gives up waiting", openai_whole_disconnect),
    ("/api/chat", "leave before the first token", api_chat_before_first_token),
    ("/v1/chat/completions stream", "leave before the first token", openai_before_first_token),
]


def run(url: str, demo: servers.Demo, trials: int) -> list[Row]:
    rows = []
    for endpoint, how, leave in SCENARIOS:
        demo.clear()
        samples = []
        for _ in range(trials):
            marker = new_marker()
            closed_at = leave(url, marker)
            record = wait_ended(demo, {marker}, timeout=20.0, poll_s=0.01)[marker]
            samples.append(sample(record, closed_at))
        rows.append(Row(how, "FIN", endpoint, samples))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_stop", description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    demo = servers.Demo()
    stopwire = servers.stopwire(demo.url)
    try:
        rows = run(stopwire.url, demo, args.trials)
    finally:
        stopwire.close()
        demo.close()
    print("# Stop latency through the OpenAI-compatible endpoint\n")
    print(f"Machine: {machine_line(machine())}")
    print(
        f"Load average (1, 5, 15 min): {load_line(load_before)} at start, "
        f"{load_line(os.getloadavg())} at end\n"
    )
    print(table(rows))
    print("\nstop latency: the provider saw its client close, minus the client's close; FIN.")


if __name__ == "__main__":
    main()
