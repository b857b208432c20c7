"""Where the node list comes from: the SageMaker API, or the Slurm head node (over SSH)."""
