"""The embedded backend: the compiled append-only log (``_native``) and everything derived from
it (per-user hnswlib indexes and their snapshots, lexical state, vector sums)."""
