"""The relay: one generation streamed from a provider to its client, stoppable at once."""
