"""The common pattern, as the baseline: a Flask generator relaying a `requests` stream.

    gunicorn -k gevent -w 1 -b 127.0.0.1:PORT bench.baseline_relay:app
    (with BASELINE_PROVIDER_URL=http://127.0.0.1:PORT/v1, the demo provider)

`POST /chat {"content"}` relays the provider's OpenAI SSE bytes as they arrive and
closes the provider response in `finally`, which runs when gunicorn closes the
generator after a failed write (GeneratorExit). Nothing else: no disconnect watcher,
no pump greenlet. That is exactly what Stopwire is measured against.
"""

import os

import requests
from flask import Flask, Response, request

app = Flask(__name__)
PROVIDER_URL = os.environ.get("BASELINE_PROVIDER_URL", "http://127.0.0.1:8001/v1")


@app.post("/chat")
def chat() -> Response:
    """Stream the provider's answer to `content` back to the client, byte for byte."""
    payload = {
        "model": "stopwire-demo",
        "stream": True,
        "messages": [{"role": "user", "content": request.get_json()["content"]}],
    }

    def relay():
        upstream = requests.post(
            f"{PROVIDER_URL}/chat/completions", json=payload, stream=True, timeout=(10, 300)
        )
        try:
            yield from upstream.iter_content(chunk_size=None)
        finally:
            upstream.close()

    return Response(relay(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
