"""Thin nipype interfaces over brainfm's plain functions."""
