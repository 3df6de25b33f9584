"""``python -m proxy`` is the ``twitch-proxy`` command."""

from .cli import main

raise SystemExit(main())
