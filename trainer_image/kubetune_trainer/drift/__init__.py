"""Drift detection: is what production sends the model still what it was trained on?"""
