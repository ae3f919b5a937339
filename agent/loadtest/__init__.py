"""`voice-agent loadtest`: many synthetic calls against a deployment, measured, reported and gated by SLOs.

Modules: ``scenarios`` (what each call does), ``runner`` (ramp, concurrency, worker processes, progress),
``agent_stats`` (the agent's CPU and memory), ``results`` (the versioned JSON, summaries, merging), ``slo``,
``report`` (the HTML report) and ``cli`` (the click commands).
"""
