"""Counters and logs that let an operator see what the agent did and what it dropped."""
