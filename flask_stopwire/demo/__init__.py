"""The demo provider: a simulated model served over real HTTP."""
