"""The operator web console: live calls, call history, prompts, summaries and eval-run comparisons.

Server-rendered pages (jinja2, autoescaped) with inline SVG charts and a few lines of JavaScript for the live
view. Everything lives under `/console` and is off (404) unless `AGENT_OPERATOR_TOKEN` is set.
"""
