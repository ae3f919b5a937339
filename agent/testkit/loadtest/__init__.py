"""`voice-agent loadtest`: many synthetic calls against a deployment, measured, reported and gated by SLOs.

Modules: ``run`` (the run's config, worker processes, progress; calls are placed by :mod:`agent.testkit.runner`
and behave as :mod:`agent.testkit.scenarios` says),
``agent_stats`` (the agent's CPU and memory), ``results`` (the versioned JSON, summaries, merging), ``slo``,
``report`` (the HTML report) and ``cli`` (the click commands).
"""
