"""The benchmark: ``python -m bench`` (see docs/performance.md).

Modules:

- :mod:`bench.upstream`: the fake Twitch (Helix + token endpoint, aiohttp) and
  an nginx that answers Helix as fast as a real server can;
- :mod:`bench.reference`: the yardstick, a minimal correct aiohttp forwarder;
- :mod:`bench.old_tool`: the old tool's design (Flask dev server + ``requests``);
- :mod:`bench.loadgen`: wrk (with ``report.lua``) and bounded aiohttp clients;
- :mod:`bench.processes`: the processes under test, pinned to CPUs, and what they cost;
- :mod:`bench.scenarios`: the scenarios, each measuring one claim;
- :mod:`bench.results`: the rows of the table and writing ``bench/results.md``;
- :mod:`bench.run`: ``main()``: starts the shared servers on loopback, runs the
  scenarios in order, writes the results.
"""
