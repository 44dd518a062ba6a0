"""Patch a library when the app imports it, not when spendwatch is instrumented.

``opentelemetry-instrument`` instruments every installed library at start-up; importing ``openai`` or LightRAG
then would cost every process (each gunicorn worker, each CLI run) their import time and memory whether or not it
makes a single call. So an instrumentor registers a post-import hook instead: it patches at once when the library
is imported already, else right after the app's own import of it finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

from wrapt import register_post_import_hook

__all__ = ["PatchOnImport"]

_logger = logging.getLogger(__name__)


class PatchOnImport:
    """Calls ``patch(module)`` once when ``module_name`` is imported (at once when it is), unless cancelled first.

    A registered hook cannot be taken back from wrapt, so ``uninstrument()`` cancels it: it then does nothing when
    the library is imported later.
    """

    def __init__(self, module_name: str, patch: Callable[[ModuleType], None]) -> None:
        self.module_name = module_name
        self._patch = patch
        self.cancelled = False
        register_post_import_hook(self._imported, module_name)

    def cancel(self) -> None:
        self.cancelled = True

    def _imported(self, module: ModuleType) -> None:
        if self.cancelled:
            return
        try:
            self._patch(module)
        except Exception as error:  # noqa: BLE001 - this runs inside the app's own import, which must not fail
            _logger.warning("spendwatch: could not instrument %s (%s); its calls are not counted", module, error)
            _logger.debug("spendwatch: instrumenting %s failed", self.module_name, exc_info=True)
