"""Weak-to-strong generalization experiments in JAX."""

from w2s.runtime import configure

configure()
