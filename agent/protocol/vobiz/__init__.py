"""vobiz."""
