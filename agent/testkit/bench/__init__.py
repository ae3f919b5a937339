"""What the bench scripts in bench/ share: the sides they run, their workload, the engine and relay processes."""
