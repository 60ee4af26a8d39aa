"""Chaos harness: kills a tiny curriculum in every way a run can die, resumes it and checks nothing was lost.

``make chaos TRIALS=8 SEED=1`` (``python -m chaos``); not part of the test suite: it trains for minutes.
"""
