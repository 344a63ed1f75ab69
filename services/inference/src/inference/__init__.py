"""Inference service: serves predictions for the model behind one registry alias."""
