"""The test kit: stand-ins for the carrier, simulated callers, the one call runner and its analysis, and the
`voice-agent call/demo/eval/loadtest` commands. Loaded only by those commands, the tests and the bench; never by
`voice-agent serve` (tests/test_optional_extras.py checks that)."""
