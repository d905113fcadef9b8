"""Running a job on Ray, vLLM-style: the engine loop (`engine`) only moves events; the scheduler
(`scheduler`) decides which sample goes where; the elasticity policy (`elasticity`) grows, drains and
replaces replicas and asks the autoscaler, and is testable without Ray; the recorder (`recorder`) turns
outcomes into the manifest's typed records and the summary. Below them: replicas of rank actors
(`replica`, `worker`), the failure policy (`failures`), the sample feed (`feed`), node checks
(`preflight`), placement and layout costs (`placement`, `layout_costs`).

May import: `echovideo`, `parallel`, `ray_jobs.data`, `ray_jobs.store`, Ray. Never `ray_jobs.tools`.
"""
