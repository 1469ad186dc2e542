"""Simulators that speak the real wire protocols of the hardware (for tests and demos)."""
