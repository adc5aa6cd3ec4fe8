"""The discrete-event simulator: entities, one instance's batching, and the event loop."""

from saga.bench.sim.simulator import RunResult, SimConfig, Simulation, simulate

__all__ = ["RunResult", "SimConfig", "Simulation", "simulate"]
