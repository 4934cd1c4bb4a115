"""`qlora-kit server`: a local HTTP service that queues, runs, streams, cancels and resumes training jobs.

Modules: `security` (loopback default, bearer token, paths confined to the root, body limits), `store` (job
records persisted under the root), `jobs` (the FIFO queue: one `qk.start` child process at a time), `app` (the
FastAPI routes and server-sent events), `client` (`qk.Client`, the Python wrapper). Only `app` imports FastAPI,
and nothing here imports torch: training runs in the child processes.
"""
