"""``faceforge serve``: a face search service around any faceforge embedder.

Parts, each a small module:

* :mod:`~faceforge.serve.store`: the gallery database (SQLite in WAL mode by default, PostgreSQL through a
  URL), one schema with versioned migrations: identities, faces (source image hash, box, landmarks,
  quality, model id, embedding, aligned crop), an audit log, a change feed and the API keys (hashes only).
  The database is the source of truth. :mod:`~faceforge.serve.sql` holds its plumbing (the SQLite and
  PostgreSQL dialects, the schema and its migrations, the connection pool), :mod:`~faceforge.serve.keys`
  the API keys' table methods, :mod:`~faceforge.serve.errors` its errors.
* :mod:`~faceforge.serve.index`: the faiss index over the faces' embeddings (exact inner product, HNSW past
  a configurable size), rebuilt from the database at start-up, kept in step through the change feed and
  checked against the database by count and checksum.
* :mod:`~faceforge.serve.pipeline`: photo bytes -> faces (decode with pixel limits, detect, align,
  optional quality gate) -> embeddings, through faceforge's detectors, alignment and embedders;
  :mod:`~faceforge.serve.batcher` shares the embedder between concurrent requests in batches.
* :mod:`~faceforge.serve.calibration`: the decision threshold for a target false-match rate.
* :mod:`~faceforge.serve.security`: API keys with scopes, request limits, rate limits.
* :mod:`~faceforge.serve.app`: the FastAPI application (JSON API, Prometheus metrics, the web page).
* :mod:`~faceforge.serve.gallery`: enrol / search / verify on a store + index + pipeline, shared by the
  service and the offline ``faceforge search``.
"""
