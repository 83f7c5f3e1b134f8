"""Shared by every tier: pytest puts this directory on sys.path (rootdir-relative "prepend"
imports), so helpers here (`fuzz_strategies`) import the same way from each tier."""
