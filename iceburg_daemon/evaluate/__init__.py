"""Evaluation and the gate: score a candidate against the champion (or the base) and decide."""
