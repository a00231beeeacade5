"""Conversations and messages: the store, its migrations and the live-answer recorder."""
