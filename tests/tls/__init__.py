"""Tests of the sans-IO TLS wire code (probed/tls) and of the Heartbleed test peer."""
