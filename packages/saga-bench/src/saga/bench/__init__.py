"""saga-bench: a discrete-event simulator of the reference cluster and the paper's tables."""
