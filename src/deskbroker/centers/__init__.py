"""Center drivers: one subpackage or module per infrastructure, behind ``base.CenterDriver``."""
