"""Preference weak-to-strong: pairwise losses (reward models, DPO); more to come."""
