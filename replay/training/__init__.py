"""Training inputs and pipelines: windows and labels from files (dataset), hyper-parameter sweeps."""
