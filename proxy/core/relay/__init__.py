"""Live events: one Twitch EventSub session per grant, relayed to every widget.

- :mod:`.local`: the relay of one process (memory or SQLite, one worker);
- :mod:`.redis_hub`, :mod:`.redis_leader`, :mod:`.redis_lease`, :mod:`.redis_widgets`:
  the relay across processes on one Redis (one leader per grant, events published once);
- :mod:`.backend`: which of the two serves, and what processes say to each other;
- :mod:`.channel`, :mod:`.sockets`, :mod:`.subscriptions`: one grant's sockets and shared
  subscriptions, created through Helix;
- :mod:`.catalog`: which subscription types and conditions a widget may ask for;
- :mod:`.stream`: what widgets receive (frames encoded once, the resume buffer, outboxes);
- :mod:`.access`: open streams end when their key or grant is revoked;
- :mod:`.settings`: what a channel is handed.
"""
