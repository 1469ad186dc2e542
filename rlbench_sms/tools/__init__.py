"""Command-line tools: find_ports, calibrate, ... (``python -m rlbench_sms.tools.<name>``)."""
