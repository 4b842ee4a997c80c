"""Prompt-based classification: cloze templates, label words, and a language model that fills the slot."""
