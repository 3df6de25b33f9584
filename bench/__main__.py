"""``python -m bench``: run every scenario and write bench/results.md."""

from bench.run import main

raise SystemExit(main())
