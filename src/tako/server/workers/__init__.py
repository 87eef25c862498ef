"""Data-plane worker processes for `[server] workers = N` (N > 1), beside the main process's own proxy.

`supervisor` (main process: starts, feeds, supervises and stops the workers), `ledger` (what each worker
may still be using, folded into the instances' in-flight counts), `child` (the worker process itself),
`messages` (the typed channel between them), `served_by` (which process answered a status request).
Nothing is imported here: a worker process loads only `child` and what it needs, not the app runtime.
"""
