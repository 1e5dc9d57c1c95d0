"""Tests of the experiment scripts (one module per script or family)."""
