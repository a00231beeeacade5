"""gunicorn.conf.py as it ships, and in each worker a recorder of its loop's timeline
(bench/timeline.py): `gunicorn -c bench/timeline_gunicorn.py` with BENCH_TIMELINE set to
the path the worker appends its records to."""

from pathlib import Path

_SHIPPED = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
exec(compile(_SHIPPED.read_text(), str(_SHIPPED), "exec"))

_shipped_post_worker_init = post_worker_init  # noqa: F821 - defined by the shipped file


def post_worker_init(worker) -> None:
    """The shipped hook, then the recorder (after the app's objects were frozen)."""
    _shipped_post_worker_init(worker)
    from bench import timeline_recorder

    timeline_recorder.start()
