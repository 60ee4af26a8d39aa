"""Benchmarks for rlpipe: ``python -m bench [--quick]`` (``make bench``) writes ``results.json`` and ``RESULTS.md``.

Modules, one per measurement:
- :mod:`bench.throughput` (with :mod:`bench.throughput_variants`, run once per fresh subprocess): trainer steps/s
  against plain stable-baselines3 scripts and raw env stepping;
- :mod:`bench.transition`: time from one session's last step to the next session's first step, and a cold
  process's time to its first step;
- :mod:`bench.transfer`: the default curriculum's second session warm-started against trained from scratch;
- :mod:`bench.orchestration`: Step Functions transitions and Lambda invocations per session, priced;
- :mod:`bench.report`: the headline and ``RESULTS.md``.
"""
