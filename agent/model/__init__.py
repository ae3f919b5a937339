"""The model side: OpenAI Realtime (GA) sessions and their events."""
