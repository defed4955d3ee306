"""What every scenario shares: processes, CPUs, load generators, measurement and the report."""
