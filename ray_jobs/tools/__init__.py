"""What users run on a job's output after (or without) a run: `export` (WebDataset, LeRobot, folders) and
`evaluate` (the paper's scores, FID/FVD, on a finished output).

May import anything below: `echovideo`, `parallel`, `ray_jobs.data`, `ray_jobs.store`, `ray_jobs.runtime`.
"""
