"""Mass generation on Ray: streamed datasets, replica groups of rank actors, exactly-once outputs, resume.

The only package that imports Ray. Its sub-packages, lowest first; each imports only those before it
(tests/test_layering.py holds them to that):

    data      the job file, tables, samples, request identity, review marks, the manifest's records
    store     Outputs (local folder, object store), ledger and leases, credentials, checkpoints, gallery
    runtime   engine loop, scheduler, elasticity policy, recorder, replicas, workers, failure policy
    tools     export, evaluate
    api       `ray_jobs.api.run`: a job from Python (a job file, or a Ray Dataset)
"""
