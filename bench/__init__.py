"""The benchmark: ``python -m bench`` (see docs/performance.md).

Modules:

- :mod:`bench.upstream`: the fake Twitch (Helix + token endpoint, aiohttp) and
  an nginx that answers Helix as fast as a real server can;
- :mod:`bench.reference`: the yardstick, a minimal correct aiohttp forwarder;
- :mod:`bench.old_tool`: the old tool's design (Flask dev server + ``requests``);
- :mod:`bench.loadgen`: wrk (with ``report.lua``) and bounded aiohttp clients;
- :mod:`bench.run`: starts everything on loopback, runs the scenarios, writes
  ``bench/results.md``.
"""
