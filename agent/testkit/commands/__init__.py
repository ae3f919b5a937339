"""The test kit's commands: `voice-agent call`, `demo` and `eval` (`loadtest` is :mod:`agent.testkit.loadtest`)."""
