"""The cost page as one self-contained HTML document: the template, its inline CSS and script (package data files
beside this module), and the page's data as an inline JSON block. Nothing is fetched from the network; a file
carries its own Content-Security-Policy (a ``<meta>``), a served page gets it as a header::

    html = render_page(document, served=False)           # report --html: CSP in the page, no connections at all
    html = render_page(document, served=True)            # GET /: send SERVED_CSP as the header
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import resources

from spendwatch.exporter.report import format_json

__all__ = ["content_security_policy", "render_page"]


@functools.cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy(*, served: bool) -> str:
    """The page's policy: its own inline script and style by hash, data: images, and nothing else, except that a
    served page may ask its own origin for other ranges (connect-src 'self')."""
    parts = [
        "default-src 'none'",
        f"script-src {_sha256(_asset('page.js'))}",
        f"style-src {_sha256(_asset('page.css'))}",
        "img-src data:",
        "connect-src 'self'" if served else "connect-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    if served:
        parts.append("frame-ancestors 'none'")  # not allowed in a <meta> policy, so only the header has it
    return "; ".join(parts)


def render_page(document: dict, *, served: bool) -> str:
    """The page with ``document`` (from :func:`~spendwatch.exporter.page.data.page_data`) embedded."""
    policy = content_security_policy(served=False)
    meta = "" if served else f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    return (
        _asset("page.html")
        .replace("{{CSP_META}}", meta)
        .replace("{{STYLE}}", _asset("page.css"))
        .replace("{{SCRIPT}}", _asset("page.js"))
        .replace("{{DATA}}", _inline_json({**document, "served": served}))
    )


def _inline_json(document: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' as such (a category named '</script>' stays text)."""
    text = format_json(document, indent=None)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
