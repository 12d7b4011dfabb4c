"""Analyses: named families of plans and reads from the paper, each producing records."""
