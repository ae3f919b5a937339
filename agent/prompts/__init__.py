"""Prompt files: instructions, voice, greeting and model settings an operator edits without touching code."""
