"""Executors: where the planned clips run. One interface (base.Executor), two implementations:
local.LocalExecutor (one Worker in this process) and ray_cluster.RayExecutor (one Worker per Ray actor).
pipeline/extract.py picks one from runtime.executor; the executors never plan."""
