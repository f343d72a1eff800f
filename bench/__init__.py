"""
Benchmarks of the inventory: ``python -m bench.run`` (``make bench``) writes ``BENCHMARKS.md``.

Everything runs on 127.0.0.1: moto's server (a separate process, so its one interpreter lock is measured
on its own), a latency-injecting gateway in front of it (``devtools.gateway`` in a process of its own),
and the measured code in processes of their own.
"""
