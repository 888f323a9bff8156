"""Readers for the pipeline's consumers: fine-tuning jobs reading released batches."""
