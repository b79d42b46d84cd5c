"""The application layer: one module per command's work, each returning Python objects.

``embedkit/cli/*`` parses options, calls these functions and prints; :mod:`embedkit.api` exposes them to notebooks.
This is where embedkit's knowledge (stores, splits, backbone and dataset names) meets ``probes`` and ``stores``,
which know nothing of embedkit. For example:

- :mod:`embedkit.app.probe` -- ``probe`` (with :mod:`embedkit.app.probe_data`: split, rows left out, bootstrap unit).
- :mod:`embedkit.app.compare` -- ``compare``: paired comparison of finished runs of any kind.
- :mod:`embedkit.app.identity` -- the display names of a run (dataset, adapter, backbone) from store provenance.
- :mod:`embedkit.app.retrieval` -- ``index``, ``search``, ``search_eval`` over a store's faiss index.
- :mod:`embedkit.app.catalog` -- ``info`` (a store), ``models`` (the backbone registry), ``manifest``, ``phantoms``.
"""
