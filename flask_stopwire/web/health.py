"""`GET /healthz`: constant time, and nothing about the process behind it."""


def healthz() -> dict[str, str]:
    """This worker answers requests."""
    return {"status": "ok"}
