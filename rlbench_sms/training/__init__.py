"""Training: the Lightning module, policy construction from config, export, sweep summaries."""
