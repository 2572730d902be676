"""Nipype workflows of brainfm."""
