"""Local, protocol-faithful stand-ins for the external services the agent talks to."""
