"""What a job reads and the records it writes: the job file (`job`), tables and Ray Datasets (`tables`,
`spill`), the samples built from their rows (`samples`), the one request identity every id, resume key and
duplicate check derives from (`request_identity`), identity photos (`identities`), review marks and the
quality gate (`review`, `quality_gate`), the manifest's typed records (`records`), and redaction.

May import: `echovideo`, `parallel.config`. Never `ray_jobs.store`, `runtime` or `tools`.
"""
