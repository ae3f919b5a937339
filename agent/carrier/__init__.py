"""The Vobiz carrier side: webhook signatures and the REST API client."""
