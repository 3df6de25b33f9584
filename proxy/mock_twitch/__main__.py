"""``python -m proxy.mock_twitch``: serve the mock Twitch alone (see :func:`main`)."""

from .app import main

if __name__ == "__main__":
    main()
