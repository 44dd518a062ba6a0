"""``python -m spendwatch.cli``: the ``spendwatch`` command, for environments without the console script."""

from spendwatch.cli import main

raise SystemExit(main())
