"""Language-model weak-to-strong: token-level distillation and (next) generative tasks."""
