"""The chat page."""

from flask import Blueprint, Response, current_app

from flask_stopwire.identity import issue_browser_identity

pages = Blueprint("stopwire_pages", __name__)

# The page loads only its own files and talks only to its own origin: even if
# model output ever reached the DOM as markup, no inline script could run.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@pages.get("/")
def index() -> Response:
    """The chat page (plain HTML, CSS and ES modules from app/static)."""
    issue_browser_identity()  # the page's API calls need no key, even when /v1 does
    response = current_app.send_static_file("index.html")
    response.headers.update(PAGE_HEADERS)
    return response
