"""Thin blueprints: the JSON/SSE API and the pages."""
