"""The truth filter: canonical records -> a verdict each (accept / reject with reason, filter and score)."""
