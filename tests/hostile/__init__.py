"""The hostile-peer suite: every protocol probe against servers that misbehave on purpose."""
