"""Build step (setuptools ``build_py``, named in pyproject.toml): ships ``spendwatch-otel-startup.pth``.

A ``.pth`` file in site-packages runs its ``import`` line in every interpreter, before ``sitecustomize``. Ours does
a string test on ``PYTHONPATH`` and, only in processes started by ``opentelemetry-instrument`` (whose directory is
on it), lets :func:`spendwatch._auto.guard_opentelemetry_startup` wrap OpenTelemetry's ``initialize()``. Nothing
else of ours could run early enough: when OpenTelemetry's own start-up fails, no entry point of ours is loaded.

The file must land at the root of site-packages, for a wheel and for ``pip install -e .`` alike. A wheel's root is
``build_lib``; an editable wheel is packed from the ``install`` command's directory instead (setuptools'
``editable_wheel`` ignores ``build_lib`` when it maps the packages back to this checkout), so it is written there.
It is named to sort after ``__editable__.*.pth``, which must put ``spendwatch`` on the path first.
"""

from __future__ import annotations

import os

from setuptools.command.build_py import build_py

PTH_NAME = "spendwatch-otel-startup.pth"
# One line, as site requires; ``os`` is imported by site already, so a process not under opentelemetry-instrument
# pays for one string search.
PTH_LINE = (
    'import os; os.sep + "auto_instrumentation" in os.environ.get("PYTHONPATH", "") and '
    '__import__("importlib").import_module("spendwatch._auto").guard_opentelemetry_startup()\n'
)


class BuildPyWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        target = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, PTH_NAME), "w", encoding="utf-8") as file:
            file.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, os.path.join(self.build_lib, PTH_NAME)]
