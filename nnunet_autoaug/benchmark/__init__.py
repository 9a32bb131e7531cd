"""Every trainer side by side on one dataset, fold and budget: train, predict, evaluate, report (resumable)."""
