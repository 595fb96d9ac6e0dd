"""Peer libraries' implementations of qat's methods, for side-by-side runs (``scripts/bench_peers.py``).

Optional: ``pip install -e ".[peers]"`` (Brevitas). Nothing in qat's core imports this package.
"""
